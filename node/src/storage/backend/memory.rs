//! An in-memory, fault-injecting backend for tests.
//!
//! A [`MemDisk`] is the "hardware": files with their current bytes and their *durable* bytes
//! (what survives a crash), a current and a durable directory, and an operation counter. Every
//! mutating call (each write, sync, `set_len`, create, rename, remove, directory sync) is one
//! numbered *operation point*. Tests can:
//!
//! - crash at operation `n` ([`MemDisk::crash_at`]): that call and every later one fails, then
//!   [`MemDisk::restart`] rebuilds the disk as a power cut would leave it ([`CrashMode`]: lose
//!   or keep unsynced data and directory entries, and tear the in-flight write at any byte);
//! - flip a bit ([`MemDisk::flip_bit`]), fail the `n`th fsync ([`MemDisk::fail_nth_sync`]),
//!   return `ENOSPC` past a capacity ([`MemDisk::set_capacity`]) or on the `n`th write.
//!
//! A file's data becomes durable on its `sync`; a directory entry (create, rename, remove)
//! becomes durable on `sync_dir`, as on a file system without a journal.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Backend, BackendFile, DirLock, OpenMode};

/// How [`MemDisk::restart`] rebuilds the disk after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashMode {
    /// Keep every completed but unsynced write and directory change (the OS happened to flush
    /// them); `false` loses them all.
    pub keep_unsynced: bool,
    /// If the crash hit a write, persist its first `n` bytes (a torn write).
    pub tear_inflight: Option<usize>,
}

impl CrashMode {
    /// Lose everything not synced.
    pub const LOSE_UNSYNCED: CrashMode = CrashMode { keep_unsynced: false, tear_inflight: None };
    /// Keep everything that completed.
    pub const KEEP_UNSYNCED: CrashMode = CrashMode { keep_unsynced: true, tear_inflight: None };
}

#[derive(Debug)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct FileState {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
}

fn apply_write(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let off = offset as usize;
    if buf.len() < off {
        buf.resize(off, 0);
    }
    // Overwrite what exists, append the rest (a copy, not a per-byte fill: fast in debug builds).
    let overlap = (buf.len() - off).min(data.len());
    buf[off..off + overlap].copy_from_slice(&data[..overlap]);
    buf.extend_from_slice(&data[overlap..]);
}

#[derive(Debug, Default)]
struct DiskState {
    files: HashMap<u64, FileState>,
    next_ino: u64,
    dir: BTreeMap<String, u64>,
    durable_dir: BTreeMap<String, u64>,
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
    inflight: Option<(u64, u64, Vec<u8>)>,
    syncs_until_failure: Option<u64>,
    writes_until_enospc: Option<u64>,
    capacity: Option<u64>,
    locked: bool,
    lock_generation: u64,
    alignment: usize,
}

fn crash_error() -> io::Error {
    io::Error::other("simulated crash: the disk is gone")
}

impl DiskState {
    /// Counts one operation point; fails if the disk crashed at or before it.
    fn point(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(crash_error());
        }
        self.ops += 1;
        if self.crash_at == Some(self.ops) {
            self.crashed = true;
            return Err(crash_error());
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.data.len() as u64).sum()
    }
}

/// The simulated disk shared by every [`MemBackend`] opened on it (clone it freely).
#[derive(Debug, Clone, Default)]
pub struct MemDisk {
    state: Arc<Mutex<DiskState>>,
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> Self {
        let disk = MemDisk::default();
        disk.lock_state().alignment = 1;
        disk
    }

    fn lock_state(&self) -> MutexGuard<'_, DiskState> {
        // A panic while holding the lock only happens in a failing test; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy of this disk in its current state (including a pending crash), for
    /// trying several restart modes from one crash.
    pub fn fork(&self) -> MemDisk {
        let s = self.lock_state();
        let files = s
            .files
            .iter()
            .map(|(ino, f)| {
                let pending = f
                    .pending
                    .iter()
                    .map(|p| match p {
                        Pending::Write { offset, data } => Pending::Write { offset: *offset, data: data.clone() },
                        Pending::SetLen(n) => Pending::SetLen(*n),
                    })
                    .collect();
                (*ino, FileState { data: f.data.clone(), durable: f.durable.clone(), pending })
            })
            .collect();
        let copy = DiskState {
            files,
            next_ino: s.next_ino,
            dir: s.dir.clone(),
            durable_dir: s.durable_dir.clone(),
            ops: s.ops,
            crash_at: s.crash_at,
            crashed: s.crashed,
            inflight: s.inflight.clone(),
            syncs_until_failure: s.syncs_until_failure,
            writes_until_enospc: s.writes_until_enospc,
            capacity: s.capacity,
            locked: false,
            lock_generation: s.lock_generation + 1,
            alignment: s.alignment,
        };
        MemDisk { state: Arc::new(Mutex::new(copy)) }
    }

    /// A backend on this disk.
    pub fn backend(&self) -> MemBackend {
        MemBackend { disk: self.clone() }
    }

    /// Makes files report this write alignment (1 by default; 4096 mimics `O_DIRECT`).
    pub fn set_alignment(&self, alignment: usize) {
        self.lock_state().alignment = alignment.max(1);
    }

    /// How many operation points have passed.
    pub fn ops(&self) -> u64 {
        self.lock_state().ops
    }

    /// Crash when operation point `n` (counted from the disk's creation) is reached: that call
    /// and all later ones fail until [`MemDisk::restart`].
    pub fn crash_at(&self, n: u64) {
        self.lock_state().crash_at = Some(n);
    }

    /// Crash now: every later call fails until [`MemDisk::restart`].
    pub fn crash_now(&self) {
        self.lock_state().crashed = true;
    }

    /// Whether the disk has crashed (and awaits a restart).
    pub fn has_crashed(&self) -> bool {
        self.lock_state().crashed
    }

    /// The length of the write the crash interrupted, if the crash hit a write.
    pub fn inflight_write_len(&self) -> Option<usize> {
        self.lock_state().inflight.as_ref().map(|(_, _, b)| b.len())
    }

    /// Rebuilds the disk as the crash left it and releases the directory lock (the process
    /// died). Files no durable directory entry names are gone.
    pub fn restart(&self, mode: CrashMode) {
        let mut s = self.lock_state();
        let inflight = s.inflight.take();
        if mode.keep_unsynced {
            s.durable_dir = s.dir.clone();
            for f in s.files.values_mut() {
                f.durable = f.data.clone();
                f.pending.clear();
            }
        } else {
            s.dir = s.durable_dir.clone();
            for f in s.files.values_mut() {
                f.data = f.durable.clone();
                f.pending.clear();
            }
        }
        if let (Some(n), Some((ino, offset, bytes))) = (mode.tear_inflight, inflight) {
            if let Some(f) = s.files.get_mut(&ino) {
                let n = n.min(bytes.len());
                apply_write(&mut f.data, offset, &bytes[..n]);
                f.durable = f.data.clone();
            }
        }
        let live: std::collections::HashSet<u64> = s.dir.values().copied().collect();
        s.files.retain(|ino, _| live.contains(ino));
        s.crashed = false;
        s.crash_at = None;
        s.syncs_until_failure = None;
        s.writes_until_enospc = None;
        s.locked = false;
        s.lock_generation += 1;
    }

    /// Flips bit `bit` (0-7) of byte `offset` of `name`, in both its current and durable
    /// contents. Returns `false` if the file or offset does not exist.
    pub fn flip_bit(&self, name: &str, offset: u64, bit: u8) -> bool {
        let mut s = self.lock_state();
        let Some(&ino) = s.dir.get(name) else { return false };
        let Some(f) = s.files.get_mut(&ino) else { return false };
        let off = offset as usize;
        if off >= f.data.len() {
            return false;
        }
        f.data[off] ^= 1 << (bit & 7);
        if off < f.durable.len() {
            f.durable[off] ^= 1 << (bit & 7);
        }
        true
    }

    /// The `n`th `sync` from now (1 = the next) fails with `EIO`; its unsynced data is dropped
    /// from the durable view, as Linux may drop dirty pages after a failed writeback.
    pub fn fail_nth_sync(&self, n: u64) {
        self.lock_state().syncs_until_failure = Some(n.max(1));
    }

    /// The `n`th write from now (1 = the next) fails with `ENOSPC` and writes nothing.
    pub fn fail_nth_write_enospc(&self, n: u64) {
        self.lock_state().writes_until_enospc = Some(n.max(1));
    }

    /// Writes or `set_len` calls that would make the files' total size exceed `bytes` fail
    /// with `ENOSPC`; `None` removes the limit.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock_state().capacity = bytes;
    }

    /// Total size of all files now.
    pub fn used_bytes(&self) -> u64 {
        self.lock_state().used_bytes()
    }

    /// The current contents of `name`.
    pub fn read_file(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.lock_state();
        let ino = s.dir.get(name)?;
        s.files.get(ino).map(|f| f.data.clone())
    }

    /// Creates or replaces `name` with `data`, durably (for loading fixtures).
    pub fn put_file(&self, name: &str, data: &[u8]) {
        let mut s = self.lock_state();
        s.next_ino += 1;
        let ino = s.next_ino;
        s.files.insert(ino, FileState { data: data.to_vec(), durable: data.to_vec(), pending: Vec::new() });
        s.dir.insert(name.to_owned(), ino);
        s.durable_dir.insert(name.to_owned(), ino);
    }

    /// The names in the current directory.
    pub fn file_names(&self) -> Vec<String> {
        self.lock_state().dir.keys().cloned().collect()
    }
}

/// A [`Backend`] on a [`MemDisk`].
#[derive(Debug, Clone)]
pub struct MemBackend {
    disk: MemDisk,
}

impl MemBackend {
    /// A backend on a fresh, empty disk.
    pub fn new() -> Self {
        MemDisk::new().backend()
    }
    /// The disk under this backend.
    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }
}

impl Default for MemBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct MemFile {
    disk: MemDisk,
    ino: u64,
}

#[derive(Debug)]
struct MemLock {
    disk: MemDisk,
    generation: u64,
}

impl DirLock for MemLock {}

impl Drop for MemLock {
    fn drop(&mut self) {
        let mut s = self.disk.lock_state();
        if s.lock_generation == self.generation {
            s.locked = false;
        }
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such file")
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl BackendFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        let s = self.disk.lock_state();
        if s.crashed {
            return Err(crash_error());
        }
        Ok(s.files.get(&self.ino).map(|f| f.data.len() as u64).unwrap_or(0))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.disk.lock_state();
        if s.crashed {
            return Err(crash_error());
        }
        let f = s.files.get(&self.ino).ok_or_else(not_found)?;
        let off = offset as usize;
        if off.checked_add(buf.len()).is_none_or(|end| end > f.data.len()) {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of file"));
        }
        buf.copy_from_slice(&f.data[off..off + buf.len()]);
        Ok(())
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.disk.lock_state();
        let was_crashed = s.crashed;
        if let Err(e) = s.point() {
            if !was_crashed {
                s.inflight = Some((self.ino, offset, data.to_vec()));
            }
            return Err(e);
        }
        if let Some(n) = s.writes_until_enospc {
            if n <= 1 {
                s.writes_until_enospc = None;
                return Err(enospc());
            }
            s.writes_until_enospc = Some(n - 1);
        }
        let cur_len = s.files.get(&self.ino).map(|f| f.data.len() as u64).unwrap_or(0);
        let end = offset + data.len() as u64;
        if let Some(cap) = s.capacity {
            if end > cur_len && s.used_bytes() + (end - cur_len) > cap {
                return Err(enospc());
            }
        }
        let f = s.files.get_mut(&self.ino).ok_or_else(not_found)?;
        apply_write(&mut f.data, offset, data);
        f.pending.push(Pending::Write { offset, data: data.to_vec() });
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.disk.lock_state();
        s.point()?;
        let fail = match s.syncs_until_failure {
            Some(n) if n <= 1 => {
                s.syncs_until_failure = None;
                true
            }
            Some(n) => {
                s.syncs_until_failure = Some(n - 1);
                false
            }
            None => false,
        };
        let f = s.files.get_mut(&self.ino).ok_or_else(not_found)?;
        let pending = std::mem::take(&mut f.pending);
        if fail {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        for p in pending {
            match p {
                Pending::Write { offset, data } => apply_write(&mut f.durable, offset, &data),
                Pending::SetLen(len) => f.durable.resize(len as usize, 0),
            }
        }
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut s = self.disk.lock_state();
        s.point()?;
        let cur_len = s.files.get(&self.ino).map(|f| f.data.len() as u64).unwrap_or(0);
        if let Some(cap) = s.capacity {
            if len > cur_len && s.used_bytes() + (len - cur_len) > cap {
                return Err(enospc());
            }
        }
        let f = s.files.get_mut(&self.ino).ok_or_else(not_found)?;
        f.data.resize(len as usize, 0);
        f.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn alignment(&self) -> usize {
        self.disk.lock_state().alignment
    }
}

impl Backend for MemBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>> {
        super::sys::check_name(name)?;
        let mut s = self.disk.lock_state();
        let ino = match (mode, s.dir.get(name).copied()) {
            (OpenMode::Existing, Some(ino)) => {
                if s.crashed {
                    return Err(crash_error());
                }
                ino
            }
            (OpenMode::Existing, None) => return Err(not_found()),
            (OpenMode::CreateNew, Some(_)) => return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists")),
            (OpenMode::CreateNew, None) => {
                s.point()?;
                s.next_ino += 1;
                let ino = s.next_ino;
                s.files.insert(ino, FileState::default());
                s.dir.insert(name.to_owned(), ino);
                ino
            }
        };
        Ok(Box::new(MemFile { disk: self.disk.clone(), ino }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut s = self.disk.lock_state();
        s.point()?;
        s.dir.remove(name).map(|_| ()).ok_or_else(not_found)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        super::sys::check_name(to)?;
        let mut s = self.disk.lock_state();
        s.point()?;
        let ino = s.dir.remove(from).ok_or_else(not_found)?;
        s.dir.insert(to.to_owned(), ino);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.disk.lock_state();
        s.point()?;
        s.durable_dir = s.dir.clone();
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.disk.lock_state();
        if s.crashed {
            return Err(crash_error());
        }
        Ok(s.dir.keys().cloned().collect())
    }

    fn lock(&self) -> io::Result<Box<dyn DirLock>> {
        let mut s = self.disk.lock_state();
        if s.locked {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "data directory is locked"));
        }
        s.locked = true;
        Ok(Box::new(MemLock { disk: self.disk.clone(), generation: s.lock_generation }))
    }

    fn describe(&self) -> String {
        "<memory>".to_owned()
    }
}
