//! The SQLite VFS of dqlite-rs: the only module of the workspace with `unsafe` code.
//!
//! A thin layer over the default OS VFS (databases stay ordinary SQLite files in WAL mode) that
//! adds three things for the files of *registered* databases (see [`register_db`]):
//!
//! * **Leader capture.** A connection's WAL writes (frame headers and pages) are kept in memory
//!   ([`buffer::WalBuffer`]; reads of those offsets are served from it) until the WAL `xSync`
//!   that SQLite issues after a commit's frames (`synchronous=FULL`). There the VFS hands the
//!   transaction's pages to [`DbHooks::commit`], which replicates them and blocks until their
//!   fate is known. On success the frames are written through to the real WAL (no fsync: the
//!   Raft log is the durable copy) and SQLite publishes the commit; on failure the buffer is
//!   dropped and the error code goes back to SQLite, which rolls the transaction back. Nothing
//!   uncommitted ever reaches the WAL file. A WAL header write (a new WAL generation) is first
//!   announced to [`DbHooks::wal_header`] and then written and synced for real, as are
//!   checkpoint syncs.
//! * **A fair write-lock queue** ([`queue`]): the WAL write-lock slot of `xShmLock` is granted
//!   in FIFO order, with a busy handler that waits for the connection's turn.
//! * **Raw wal-index access** ([`Shm`]) for the follower apply path in `crate::db`.
//!
//! The VFS reports `SQLITE_IOCAP_POWERSAFE_OVERWRITE` (so SQLite neither pads commits nor syncs
//! mid-frame) and implements version 2 of `sqlite3_io_methods` (no `xFetch`: no memory maps, so a
//! node's memory does not grow with database size).
//!
//! Every `unsafe` block carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod buffer;
pub mod fault;
pub(crate) mod queue;

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use libsqlite3_sys as ffi;

use buffer::WalBuffer;
pub use queue::ConnId;
use queue::{Turn, WriteQueue};

/// The name the VFS is registered under.
pub const VFS_NAME: &str = "dqlite-rs";

/// Bytes in one wal-index (shm) region.
pub const SHM_REGION_BYTES: usize = 32768;

/// The WAL header size.
const WAL_HDR_BYTES: u64 = 32;
/// A WAL frame header's size.
const FRAME_HDR_BYTES: u64 = 24;

/// Why the VFS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VfsError {
    /// SQLite has no default VFS to wrap.
    #[error("SQLite has no default VFS")]
    NoDefaultVfs,
    /// `sqlite3_vfs_register` failed.
    #[error("sqlite3_vfs_register failed with code {0}")]
    Register(c_int),
}

/// One committed transaction's pages, as captured at the WAL sync.
#[derive(Debug)]
pub struct Capture {
    /// The database page size.
    pub page_size: u32,
    /// The database size in pages after the commit (from the commit frame).
    pub db_size: u32,
    /// Page number and image of every page the transaction wrote (last write of a page wins),
    /// in page-number order.
    pub pages: Vec<(u32, Vec<u8>)>,
}

/// What the replication layer does at the VFS's hook points (implemented by `crate::db`).
pub trait DbHooks: Send + Sync + 'static {
    /// A complete commit of `conn` was captured. Blocks until its fate is known: `Ok` lets it
    /// reach the WAL, `Err(code)` rolls it back with that SQLite extended error code.
    fn commit(&self, conn: ConnId, capture: Capture) -> Result<(), c_int>;
    /// `conn` is about to write a new WAL header (a new WAL generation starts). Returns only
    /// when whatever must be durable before the header is.
    fn wal_header(&self, conn: ConnId, header: &[u8; 32]) -> Result<(), c_int>;
    /// `conn` released the WAL write lock (or closed): whatever it committed is published in
    /// the wal-index.
    fn write_unlocked(&self, _conn: ConnId) {}
    /// Writing a commit that [`commit`](Self::commit) let through (its entry is committed)
    /// to the WAL failed with `rc` (disk full, I/O error): SQLite rolls the transaction back
    /// locally although it is committed. Returns the code the writer gets.
    fn write_through_failed(&self, _conn: ConnId, rc: c_int) -> c_int {
        rc
    }
    /// Whether client connections may take the WAL write lock now (priority connections always
    /// may). While false, writers wait in the queue, bounded by their busy timeout; call
    /// [`DbEntry::wake_writers`] when it turns true.
    fn writes_allowed(&self) -> bool {
        true
    }
}

struct ConnSlot {
    /// The connection's real main-database file (valid while the connection is open).
    main: *mut ffi::sqlite3_file,
    /// Uncommitted WAL writes of the connection's write transaction.
    wal: WalBuffer,
    /// Served before client writers in the write-lock queue.
    priority: bool,
}

// SAFETY: `main` points at a file owned by one SQLite connection; it is only dereferenced by
// the thread currently using that connection (SQLite calls, or `Shm`, which borrows the
// connection), never concurrently. The slot itself only moves between threads under a mutex.
unsafe impl Send for ConnSlot {}

/// A registered database: the replication hooks and the shared state of its connections.
pub struct DbEntry {
    path: String,
    hooks: Arc<dyn DbHooks>,
    queue: WriteQueue,
    conns: Mutex<HashMap<ConnId, ConnSlot>>,
}

impl std::fmt::Debug for DbEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbEntry").field("path", &self.path).finish()
    }
}

impl DbEntry {
    /// Wakes the connections waiting for the write lock (after [`DbHooks::writes_allowed`]
    /// turned true).
    pub fn wake_writers(&self) {
        self.queue.wake();
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<ConnId, ConnSlot>> {
        self.conns.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The database file's path.
    pub fn path(&self) -> &str {
        &self.path
    }
}

#[derive(Default)]
struct Registry {
    entries: HashMap<String, Arc<DbEntry>>,
    /// How many times the files of a directory were replaced ([`replace_dir`]).
    replaced: HashMap<String, u64>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers (or replaces) the database at `path` (absolute, canonical: the string SQLite's
/// `xFullPathname` yields) with its hooks. Connections opened afterwards use them.
pub fn register_db(path: &str, hooks: Arc<dyn DbHooks>) -> Arc<DbEntry> {
    let entry = Arc::new(DbEntry {
        path: path.to_string(),
        hooks,
        queue: WriteQueue::default(),
        conns: Mutex::new(HashMap::new()),
    });
    registry().entries.insert(path.to_string(), entry.clone());
    entry
}

/// Forgets the database at `path` (its open connections keep their entry until they close).
pub fn unregister_db(path: &str) {
    registry().entries.remove(path);
}

fn lookup(path: &str) -> Option<Arc<DbEntry>> {
    registry().entries.get(path).cloned()
}

/// The directory part of a database path (as SQLite gives it to `xOpen`).
fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Replaces every database file in directory `dir` (canonical): forgets the databases
/// registered there and runs `swap` (which moves the old files away and the new ones in) with
/// the registry locked.
///
/// A connection opened on the old files keeps its file descriptors, but SQLite opens a
/// database's `-shm` by *path* when the connection first maps its wal-index. An old connection
/// doing that after the swap would open the *new* files' `-shm` as a different database inode,
/// take itself for the first user (POSIX locks do not conflict within a process) and truncate
/// it under the new files' connections (SIGBUS in their mappings, a zeroed wal-index). So every
/// wal-index map of a main-database file opened before the swap is refused afterwards with
/// `SQLITE_IOERR_SHMOPEN` (such connections are stale: the db layer refuses their requests).
pub fn replace_dir<R>(dir: &str, swap: impl FnOnce() -> R) -> R {
    let mut reg = registry();
    reg.entries.retain(|path, _| parent_dir(path) != dir);
    *reg.replaced.entry(dir.to_string()).or_insert(0) += 1;
    swap()
}

/// How many times `dir`'s files were replaced (registry locked by the caller).
fn replaced_count(reg: &Registry, dir: &str) -> u64 {
    reg.replaced.get(dir).copied().unwrap_or(0)
}

struct OrigVfs(*mut ffi::sqlite3_vfs);
// SAFETY: the default VFS object is static inside SQLite and thread-safe by SQLite's contract.
unsafe impl Send for OrigVfs {}
// SAFETY: as above.
unsafe impl Sync for OrigVfs {}

static ORIG: OnceLock<OrigVfs> = OnceLock::new();

fn orig() -> *mut ffi::sqlite3_vfs {
    ORIG.get().map_or(std::ptr::null_mut(), |o| o.0)
}

/// Registers the VFS with SQLite (idempotent).
pub fn register() -> Result<(), VfsError> {
    static DONE: OnceLock<Result<(), c_int>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: sqlite3_initialize is safe to call any number of times from any thread.
        unsafe { ffi::sqlite3_initialize() };
        // SAFETY: a null name asks for the default VFS; the result is null or a static object.
        let dflt = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
        if dflt.is_null() {
            return Err(-1);
        }
        let _ = ORIG.set(OrigVfs(dflt));
        // SAFETY: `dflt` is a valid VFS object (non-null, static); we copy it by value.
        let mut ours: ffi::sqlite3_vfs = unsafe { *dflt };
        let name = CString::new(VFS_NAME).map_err(|_| -1)?;
        ours.zName = name.into_raw();
        ours.pNext = std::ptr::null_mut();
        ours.szOsFile = std::mem::size_of::<VfsFile>() as c_int;
        ours.xOpen = Some(x_open);
        let ours = Box::leak(Box::new(ours));
        // SAFETY: `ours` is a fully initialised VFS object that lives forever (leaked).
        let rc = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(rc)
        }
    });
    match r {
        Ok(()) => Ok(()),
        Err(-1) => Err(VfsError::NoDefaultVfs),
        Err(rc) => Err(VfsError::Register(*rc)),
    }
}

const KIND_OTHER: u8 = 0;
const KIND_MAIN: u8 = 1;
const KIND_WAL: u8 = 2;

/// Our `sqlite3_file`: SQLite's base struct first, then the wrapped OS file.
#[repr(C)]
struct VfsFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    real_size: usize,
    kind: u8,
    /// `Arc::into_raw` of the database entry, or null.
    entry: *const DbEntry,
    conn: Option<ConnId>,
    /// A main-database file: its directory and how many times that directory's files had been
    /// replaced ([`replace_dir`]) before the file was opened.
    main_dir: Option<(Box<str>, u64)>,
}

impl VfsFile {
    fn entry(&self) -> Option<&DbEntry> {
        // SAFETY: `entry` is null or came from `Arc::into_raw` in `x_open`, and the Arc is only
        // released in `x_close`, after which SQLite never uses the file again.
        unsafe { self.entry.as_ref() }
    }

    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: `real` was opened successfully by the OS VFS in `x_open` (we only install our
        // methods then), so its `pMethods` is a valid static method table.
        unsafe { &*(*self.real).pMethods }
    }
}

/// # Safety
/// `f` must be a file that `x_open` opened successfully and has not been closed.
unsafe fn file<'a>(f: *mut ffi::sqlite3_file) -> &'a mut VfsFile {
    // SAFETY: guaranteed by the caller; SQLite never uses one file from two threads at once.
    unsafe { &mut *(f as *mut VfsFile) }
}

fn parse_conn(name: *const c_char) -> Option<ConnId> {
    let key = c"dqconn";
    // SAFETY: `name` is a filename SQLite passed to xOpen (database, journal or WAL name), which
    // sqlite3_uri_parameter accepts; the result is null or a NUL-terminated string inside it.
    let v = unsafe { ffi::sqlite3_uri_parameter(name, key.as_ptr()) };
    if v.is_null() {
        return None;
    }
    // SAFETY: non-null, NUL-terminated (see above).
    unsafe { CStr::from_ptr(v) }.to_str().ok()?.parse().ok().map(ConnId)
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    f: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let o = orig();
    // SAFETY: register() set ORIG before registering this VFS, so `o` is valid.
    let size = unsafe { (*o).szOsFile } as usize;
    let layout = match std::alloc::Layout::from_size_align(size.max(8), 16) {
        Ok(l) => l,
        Err(_) => return ffi::SQLITE_NOMEM,
    };
    // SAFETY: the layout has a non-zero size.
    let real = unsafe { std::alloc::alloc_zeroed(layout) } as *mut ffi::sqlite3_file;
    if real.is_null() {
        return ffi::SQLITE_NOMEM;
    }
    let vf = f as *mut VfsFile;
    // SAFETY: SQLite gives us szOsFile (= size_of::<VfsFile>()) writable bytes at `f`.
    unsafe {
        std::ptr::write(
            vf,
            VfsFile {
                base: ffi::sqlite3_file { pMethods: std::ptr::null() },
                real,
                real_size: size.max(8),
                kind: KIND_OTHER,
                entry: std::ptr::null(),
                conn: None,
                main_dir: None,
            },
        );
    }
    // Counted before the real open: a swap that happens after this count was taken may have
    // given us either the old or the new file; both are then refused a wal-index (x_shm_map).
    let main_dir = if !name.is_null() && flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
        // SAFETY: SQLite filenames are NUL-terminated.
        let path = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        let dir = parent_dir(&path);
        Some((Box::<str>::from(dir), replaced_count(&registry(), dir)))
    } else {
        None
    };
    // SAFETY: `o` is the OS VFS; `real` has its szOsFile bytes; the other arguments are SQLite's.
    let rc = unsafe { ((*o).xOpen.expect("OS VFS has xOpen"))(o, name, real, flags, out_flags) };
    // SAFETY: `real` was just initialised (or left with null methods) by the OS VFS.
    if rc != ffi::SQLITE_OK || unsafe { (*real).pMethods.is_null() } {
        // SAFETY: allocated above with this layout; the OS VFS did not keep it (open failed).
        unsafe { std::alloc::dealloc(real as *mut u8, layout) };
        return if rc == ffi::SQLITE_OK { ffi::SQLITE_CANTOPEN } else { rc };
    }
    // SAFETY: we initialised the VfsFile above.
    let me = unsafe { &mut *vf };
    me.main_dir = main_dir;
    if !name.is_null() {
        let kind = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            KIND_MAIN
        } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
            KIND_WAL
        } else {
            KIND_OTHER
        };
        if kind != KIND_OTHER {
            let db_name = if kind == KIND_MAIN {
                name
            } else {
                // SAFETY: `name` is a WAL filename given to xOpen.
                unsafe { ffi::sqlite3_filename_database(name) }
            };
            // SAFETY: SQLite filenames are NUL-terminated.
            let db_path = unsafe { CStr::from_ptr(db_name) }.to_string_lossy().into_owned();
            if let Some(entry) = lookup(&db_path) {
                let conn = parse_conn(name);
                if kind == KIND_MAIN {
                    if let Some(id) = conn {
                        entry.slots().insert(id, ConnSlot { main: real, wal: WalBuffer::default(), priority: false });
                    }
                }
                me.kind = kind;
                me.conn = conn;
                me.entry = Arc::into_raw(entry);
            }
        }
    }
    me.base.pMethods = &IO_METHODS;
    ffi::SQLITE_OK
}

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 2,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes only files we opened, once.
    let me = unsafe { file(f) };
    // SAFETY: `real` is open; closing it is the last use.
    let rc = unsafe { (me.methods().xClose.expect("xClose"))(me.real) };
    if !me.entry.is_null() {
        // SAFETY: from Arc::into_raw in x_open, released exactly once here.
        let entry = unsafe { Arc::from_raw(me.entry) };
        if me.kind == KIND_MAIN {
            if let Some(id) = me.conn {
                entry.slots().remove(&id);
                entry.queue.release(id);
                entry.queue.forget(id);
                entry.hooks.write_unlocked(id);
            }
        }
        me.entry = std::ptr::null();
    }
    me.main_dir = None;
    if let Ok(layout) = std::alloc::Layout::from_size_align(me.real_size, 16) {
        // SAFETY: allocated in x_open with this layout; the OS file is closed.
        unsafe { std::alloc::dealloc(me.real as *mut u8, layout) };
    }
    me.base.pMethods = std::ptr::null();
    rc
}

/// Runs `op` on the connection's WAL buffer if `me` is a registered WAL file with a connection.
fn with_wal_buffer<R>(me: &VfsFile, op: impl FnOnce(&mut WalBuffer) -> R) -> Option<R> {
    if me.kind != KIND_WAL {
        return None;
    }
    let (entry, id) = (me.entry()?, me.conn?);
    let mut slots = entry.slots();
    slots.get_mut(&id).map(|s| op(&mut s.wal))
}

unsafe extern "C" fn x_read(f: *mut ffi::sqlite3_file, buf: *mut c_void, amt: c_int, off: i64) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    // SAFETY: delegating with SQLite's own arguments.
    let rc = unsafe { (me.methods().xRead.expect("xRead"))(me.real, buf, amt, off) };
    if me.kind != KIND_WAL || amt <= 0 {
        return rc;
    }
    // SAFETY: SQLite gives `amt` writable bytes at `buf`.
    let out = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, amt as usize) };
    let covered = with_wal_buffer(me, |b| if b.is_empty() { 0 } else { b.overlay(off as u64, out) });
    match covered {
        Some(end) if end > 0 => {
            if rc == ffi::SQLITE_IOERR_SHORT_READ && end >= off as u64 + amt as u64 {
                ffi::SQLITE_OK
            } else {
                rc
            }
        }
        _ => rc,
    }
}

unsafe extern "C" fn x_write(f: *mut ffi::sqlite3_file, buf: *const c_void, amt: c_int, off: i64) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    if me.kind == KIND_WAL && amt > 0 {
        if let (Some(entry), Some(id)) = (me.entry(), me.conn) {
            // SAFETY: SQLite gives `amt` readable bytes at `buf`.
            let data = unsafe { std::slice::from_raw_parts(buf as *const u8, amt as usize) };
            if off == 0 && amt as u64 == WAL_HDR_BYTES {
                let mut hdr = [0u8; 32];
                hdr.copy_from_slice(data);
                if let Err(code) = entry.hooks.wal_header(id, &hdr) {
                    return code;
                }
            } else if let Some(()) = with_wal_buffer(me, |b| b.write(off as u64, data)) {
                return ffi::SQLITE_OK;
            }
        }
    }
    // SAFETY: delegating with SQLite's own arguments.
    unsafe { (me.methods().xWrite.expect("xWrite"))(me.real, buf, amt, off) }
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    // SAFETY: delegating.
    unsafe { (me.methods().xTruncate.expect("xTruncate"))(me.real, size) }
}

/// Reads `out.len()` bytes at `off` of the real file (zero-filled past its end).
fn real_read(me: &VfsFile, off: u64, out: &mut [u8]) -> c_int {
    // SAFETY: `out` is a valid writable buffer of that length; `real` is open.
    let rc = unsafe {
        (me.methods().xRead.expect("xRead"))(me.real, out.as_mut_ptr() as *mut c_void, out.len() as c_int, off as i64)
    };
    if rc == ffi::SQLITE_IOERR_SHORT_READ {
        ffi::SQLITE_OK
    } else {
        rc
    }
}

fn real_write(me: &VfsFile, off: u64, data: &[u8]) -> c_int {
    // SAFETY: `data` is a valid readable buffer of that length; `real` is open.
    unsafe {
        (me.methods().xWrite.expect("xWrite"))(me.real, data.as_ptr() as *const c_void, data.len() as c_int, off as i64)
    }
}

/// The most bytes one write of a commit's frames carries (the unix VFS writes at most 128 KiB
/// minus one byte in one call: `seekAndWriteFd` masks the length with 0x1ffff).
const WRITE_THROUGH_RUN: usize = 64 << 10;

/// The capture at a commit's WAL sync: parse the buffered frames, hand them to the hooks and
/// write them through (or drop them).
fn commit_sync(me: &VfsFile, entry: &DbEntry, id: ConnId) -> Option<c_int> {
    let buf = {
        let mut slots = entry.slots();
        let slot = slots.get_mut(&id)?;
        if slot.wal.is_empty() {
            return None;
        }
        std::mem::take(&mut slot.wal)
    };
    let mut hdr = [0u8; 32];
    let rc = real_read(me, 0, &mut hdr);
    if rc != ffi::SQLITE_OK {
        return Some(rc);
    }
    buf.overlay(0, &mut hdr);
    let page_size = u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        tracing::error!(db = entry.path, page_size, "WAL header has an invalid page size at commit");
        return Some(ffi::SQLITE_IOERR_FSYNC);
    }
    let frame_bytes = FRAME_HDR_BYTES + page_size as u64;
    // Frame indexes (0-based) whose header is buffered.
    let mut first = None;
    let mut commit = None;
    for (off, piece) in buf.pieces() {
        if off < WAL_HDR_BYTES || (off - WAL_HDR_BYTES) % frame_bytes != 0 || piece.len() as u64 != FRAME_HDR_BYTES {
            continue;
        }
        let i = (off - WAL_HDR_BYTES) / frame_bytes;
        first = Some(first.map_or(i, |f: u64| f.min(i)));
        if u32::from_be_bytes([piece[4], piece[5], piece[6], piece[7]]) != 0 {
            commit = Some(commit.map_or(i, |c: u64| c.max(i)));
        }
    }
    let (Some(first), Some(commit)) = (first, commit) else {
        // Frames without a commit frame: not a commit sync. Keep them and sync for real.
        let mut slots = entry.slots();
        if let Some(slot) = slots.get_mut(&id) {
            slot.wal = buf;
        }
        return None;
    };
    let mut pages = std::collections::BTreeMap::new();
    let mut db_size = 0;
    let mut frame = vec![0u8; frame_bytes as usize];
    for i in first..=commit {
        let off = WAL_HDR_BYTES + i * frame_bytes;
        frame.fill(0);
        if buf.overlay(off, &mut frame) < off + frame_bytes {
            tracing::error!(db = entry.path, frame = i + 1, "a frame of the committing transaction is missing");
            return Some(ffi::SQLITE_IOERR_FSYNC);
        }
        let pgno = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if i == commit {
            db_size = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        }
        pages.insert(pgno, frame[FRAME_HDR_BYTES as usize..].to_vec());
    }
    let capture = Capture { page_size, db_size, pages: pages.into_iter().collect() };
    let end = WAL_HDR_BYTES + (commit + 1) * frame_bytes;
    // The frames go to the WAL file *before* the entry is proposed, all but the commit frame's
    // header, which is written as zeros: SQLite's recovery (and `db::wal`'s scan) stop at a
    // frame whose salts do not match, so until the real header is written these frames are
    // no commit and readers never see them (they lie past the wal-index's `mxFrame`). A full
    // disk thus fails the commit here, before anything is in the log; the write that follows
    // the commit only overwrites 24 bytes in place. One write per run of adjacent frames.
    let hdr_off = WAL_HDR_BYTES + commit * frame_bytes;
    let hdr_end = hdr_off + FRAME_HDR_BYTES;
    for (off, mut run) in buf.runs(end, WRITE_THROUGH_RUN) {
        let run_end = off + run.len() as u64;
        if off < hdr_end && hdr_off < run_end {
            let (from, to) = (hdr_off.max(off) - off, hdr_end.min(run_end) - off);
            run[from as usize..to as usize].fill(0);
        }
        let rc = real_write(me, off, &run);
        if rc != ffi::SQLITE_OK {
            tracing::warn!(db = entry.path, rc, "writing a commit's frames to the WAL failed: the commit fails");
            return Some(rc);
        }
    }
    let mut hdr = [0u8; FRAME_HDR_BYTES as usize];
    buf.overlay(hdr_off, &mut hdr);
    match entry.hooks.commit(id, capture) {
        Ok(()) => {
            let rc =
                if fault::write_through_fails(&entry.path) { ffi::SQLITE_FULL } else { real_write(me, hdr_off, &hdr) };
            if rc != ffi::SQLITE_OK {
                tracing::error!(db = entry.path, rc, "writing a committed frame header to the WAL failed");
                return Some(entry.hooks.write_through_failed(id, rc));
            }
            Some(ffi::SQLITE_OK)
        }
        Err(code) => Some(code),
    }
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    if me.kind == KIND_WAL {
        if let (Some(entry), Some(id)) = (me.entry(), me.conn) {
            if let Some(rc) = commit_sync(me, entry, id) {
                return rc;
            }
        }
    }
    // SAFETY: delegating (WAL header and checkpoint syncs, database file syncs).
    unsafe { (me.methods().xSync.expect("xSync"))(me.real, flags) }
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, out: *mut i64) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    // SAFETY: delegating; `out` is SQLite's.
    let rc = unsafe { (me.methods().xFileSize.expect("xFileSize"))(me.real, out) };
    if rc == ffi::SQLITE_OK {
        if let Some(end) = with_wal_buffer(me, |b| b.end()) {
            // SAFETY: `out` is a valid pointer given by SQLite, just written by the OS VFS.
            unsafe { *out = (*out).max(end as i64) };
        }
    }
    rc
}

unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, l: c_int) -> c_int {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xLock.expect("xLock"))(file(f).real, l) }
}

unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, l: c_int) -> c_int {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xUnlock.expect("xUnlock"))(file(f).real, l) }
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xCheckReservedLock.expect("xCheckReservedLock"))(file(f).real, out) }
}

unsafe extern "C" fn x_file_control(f: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    if op == ffi::SQLITE_FCNTL_PERSIST_WAL && me.kind == KIND_MAIN && !me.entry.is_null() {
        // A registered database keeps its WAL when the last connection closes: restart counts
        // the commits in it (docs/replication.md). Requests to change that are ignored.
        if !arg.is_null() {
            // SAFETY: for this opcode SQLite passes a pointer to an int.
            unsafe { *(arg as *mut c_int) = 1 };
        }
        return ffi::SQLITE_OK;
    }
    if op == ffi::SQLITE_FCNTL_MMAP_SIZE {
        // No memory maps (bounded memory): report 0 and ignore the request.
        if !arg.is_null() {
            // SAFETY: for this opcode SQLite passes a pointer to an i64.
            unsafe { *(arg as *mut i64) = 0 };
        }
        return ffi::SQLITE_OK;
    }
    // SAFETY: delegating.
    unsafe { (me.methods().xFileControl.expect("xFileControl"))(me.real, op, arg) }
}

unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xSectorSize.expect("xSectorSize"))(file(f).real) }
}

unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: an open file of ours; delegating.
    let rc = unsafe { (file(f).methods().xDeviceCharacteristics.expect("xDeviceCharacteristics"))(file(f).real) };
    rc | ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    pg: c_int,
    sz: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    let map = || {
        // SAFETY: delegating with SQLite's own arguments.
        unsafe { (me.methods().xShmMap.expect("xShmMap"))(me.real, pg, sz, extend, pp) }
    };
    let Some((dir, count)) = &me.main_dir else { return map() };
    // Under the registry lock, so that the OS VFS opens the `-shm` (by path) either before a
    // swap of the directory's files or, refused, after it (see `replace_dir`).
    let reg = registry();
    if replaced_count(&reg, dir) != *count {
        tracing::debug!(dir = &**dir, "wal-index of a database file replaced by a snapshot install refused");
        return ffi::SQLITE_IOERR_SHMOPEN;
    }
    let rc = map();
    drop(reg);
    rc
}

unsafe extern "C" fn x_shm_lock(f: *mut ffi::sqlite3_file, ofst: c_int, n: c_int, flags: c_int) -> c_int {
    // SAFETY: an open file of ours.
    let me = unsafe { file(f) };
    let real_lock = |flags: c_int| {
        // SAFETY: delegating.
        unsafe { (me.methods().xShmLock.expect("xShmLock"))(me.real, ofst, n, flags) }
    };
    let (Some(entry), Some(id)) = (me.entry(), me.conn) else { return real_lock(flags) };
    if me.kind != KIND_MAIN || ofst != 0 || flags & ffi::SQLITE_SHM_EXCLUSIVE == 0 {
        return real_lock(flags);
    }
    if flags & ffi::SQLITE_SHM_LOCK != 0 {
        let priority = entry.slots().get(&id).is_some_and(|s| s.priority);
        match entry.queue.try_acquire(id, priority, &|| entry.hooks.writes_allowed()) {
            Turn::Wait => ffi::SQLITE_BUSY,
            Turn::Go => {
                let rc = real_lock(flags);
                if rc != ffi::SQLITE_OK {
                    entry.queue.failed(id);
                }
                rc
            }
        }
    } else {
        let rc = real_lock(flags);
        if let Some(slot) = entry.slots().get_mut(&id) {
            slot.wal.clear();
        }
        entry.queue.release(id);
        entry.hooks.write_unlocked(id);
        rc
    }
}

unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xShmBarrier.expect("xShmBarrier"))(file(f).real) }
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: an open file of ours; delegating.
    unsafe { (file(f).methods().xShmUnmap.expect("xShmUnmap"))(file(f).real, delete) }
}

/// How a [`VfsConnection`] takes part in the write-lock queue.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    /// Served before client writers (the follower apply connection).
    pub priority: bool,
    /// How long a writer waits for its turn before `SQLITE_BUSY`.
    pub busy_timeout: Duration,
    /// Open read-only.
    pub read_only: bool,
}

struct BusyCtx {
    entry: Arc<DbEntry>,
    id: ConnId,
    timeout: Mutex<Duration>,
    started: Mutex<Instant>,
}

unsafe extern "C" fn busy_cb(ctx: *mut c_void, count: c_int) -> c_int {
    // SAFETY: `ctx` is the BusyCtx boxed in the VfsConnection, which outlives its SQLite
    // connection (the connection field is dropped first).
    let ctx = unsafe { &*(ctx as *const BusyCtx) };
    let mut started = ctx.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if count == 0 {
        *started = Instant::now();
    }
    let deadline = *started + *ctx.timeout.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    drop(started);
    let priority = ctx.entry.slots().get(&ctx.id).is_some_and(|s| s.priority);
    let gate = || priority || ctx.entry.hooks.writes_allowed();
    if ctx.entry.queue.wait_turn(ctx.id, deadline, &gate) {
        1
    } else {
        ctx.entry.queue.forget(ctx.id);
        0
    }
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

fn uri_escape(path: &str) -> String {
    let mut s = String::with_capacity(path.len() + 8);
    for b in path.bytes() {
        match b {
            b'%' | b'?' | b'#' | b'&' | b'=' => s.push_str(&format!("%{b:02X}")),
            _ => s.push(b as char),
        }
    }
    s
}

/// A SQLite connection opened through this VFS on a registered database.
pub struct VfsConnection {
    // Field order matters: the connection closes before the busy context it points at drops.
    conn: rusqlite::Connection,
    busy: Box<BusyCtx>,
}

impl std::fmt::Debug for VfsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfsConnection").field("db", &self.busy.entry.path).field("id", &self.busy.id).finish()
    }
}

impl VfsConnection {
    /// Opens `entry`'s database (creating it if `read_only` is false).
    pub fn open(entry: &Arc<DbEntry>, opts: ConnOptions) -> Result<Self, rusqlite::Error> {
        register()
            .map_err(|e| rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_ERROR), Some(e.to_string())))?;
        let id = ConnId(NEXT_CONN.fetch_add(1, Ordering::Relaxed));
        let uri = format!("file:{}?dqconn={}", uri_escape(&entry.path), id.0);
        let mut flags = rusqlite::OpenFlags::SQLITE_OPEN_URI | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if opts.read_only {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
        };
        let conn = rusqlite::Connection::open_with_flags_and_vfs(Path::new(&uri), flags, VFS_NAME)?;
        if let Some(slot) = entry.slots().get_mut(&id) {
            slot.priority = opts.priority;
        }
        let busy = Box::new(BusyCtx {
            entry: entry.clone(),
            id,
            timeout: Mutex::new(opts.busy_timeout),
            started: Mutex::new(Instant::now()),
        });
        // SAFETY: `conn.handle()` is the live sqlite3 handle; the callback's context is the boxed
        // BusyCtx, which outlives the connection (field order above) and does not move (boxed).
        let rc =
            unsafe { ffi::sqlite3_busy_handler(conn.handle(), Some(busy_cb), &*busy as *const BusyCtx as *mut c_void) };
        if rc != ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(
                ffi::Error::new(rc),
                Some("sqlite3_busy_handler failed".into()),
            ));
        }
        Ok(VfsConnection { conn, busy })
    }

    /// The SQLite connection.
    pub fn conn(&self) -> &rusqlite::Connection {
        &self.conn
    }

    /// Changes how long this connection waits for the write lock.
    pub fn set_busy_timeout(&self, timeout: Duration) {
        *self.busy.timeout.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = timeout;
    }

    /// The connection's id in the VFS.
    pub fn id(&self) -> ConnId {
        self.busy.id
    }

    /// The database entry.
    pub fn entry(&self) -> &Arc<DbEntry> {
        &self.busy.entry
    }

    /// Whether this connection holds the database's write lock (an open write transaction).
    pub fn holds_write_lock(&self) -> bool {
        self.busy.entry.queue.holds(self.busy.id)
    }

    /// Sets what `last_insert_rowid()` returns on this connection (`sqlite3_set_last_insert_rowid`):
    /// the group commit runs other connections' statements on one connection and gives each
    /// the value its own connection would have.
    pub fn set_last_insert_rowid(&self, rowid: i64) {
        // SAFETY: `conn.handle()` is this live connection's sqlite3 handle, used on its own thread.
        unsafe { ffi::sqlite3_set_last_insert_rowid(self.conn.handle(), rowid) };
    }

    /// Drops the connection's place in the write-lock queue unless it holds the lock. Call after
    /// every statement: a statement that ended with `SQLITE_BUSY` outside the busy handler (a
    /// deferred transaction upgrading to a write) must not keep others waiting.
    pub fn end_statement(&self) {
        self.busy.entry.queue.forget(self.busy.id);
    }

    /// Reads the main database file through SQLite's own file handle (opening a second
    /// descriptor would drop the process's POSIX locks on it when closed). Past the end: zeros.
    pub fn read_db_file(&self, off: u64, out: &mut [u8]) -> Result<(), c_int> {
        let main = self.busy.entry.slots().get(&self.busy.id).ok_or(ffi::SQLITE_MISUSE)?.main;
        // SAFETY: `main` is this open connection's real database file (borrowed via `self`);
        // `out` is a valid writable buffer.
        let rc = unsafe {
            ((*(*main).pMethods).xRead.expect("xRead"))(
                main,
                out.as_mut_ptr() as *mut c_void,
                out.len() as c_int,
                off as i64,
            )
        };
        if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_IOERR_SHORT_READ {
            Ok(())
        } else {
            Err(rc)
        }
    }

    /// The main database file's size in bytes.
    pub fn db_file_size(&self) -> Result<u64, c_int> {
        let main = self.busy.entry.slots().get(&self.busy.id).ok_or(ffi::SQLITE_MISUSE)?.main;
        let mut size: i64 = 0;
        // SAFETY: as in `read_db_file`; `size` receives the result.
        let rc = unsafe { ((*(*main).pMethods).xFileSize.expect("xFileSize"))(main, &mut size) };
        if rc == ffi::SQLITE_OK {
            Ok(size as u64)
        } else {
            Err(rc)
        }
    }

    /// Raw wal-index access (for the follower apply path).
    pub fn shm(&self) -> Option<Shm<'_>> {
        let main = self.busy.entry.slots().get(&self.busy.id)?.main;
        Some(Shm { file: main, _conn: PhantomData })
    }
}

/// Raw access to a connection's wal-index (the `-shm` mapping), borrowed from the connection.
pub struct Shm<'c> {
    file: *mut ffi::sqlite3_file,
    _conn: PhantomData<&'c rusqlite::Connection>,
}

impl Shm<'_> {
    fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: `file` is the connection's open main-database file (the connection is borrowed
        // for our lifetime, so it stays open).
        unsafe { &*(*self.file).pMethods }
    }

    /// Maps (creating if needed) wal-index region `i`.
    pub fn region(&self, i: u32) -> Result<Region<'_>, c_int> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: the file is open (see `methods`); `p` receives the mapping.
        let rc = unsafe {
            (self.methods().xShmMap.expect("xShmMap"))(self.file, i as c_int, SHM_REGION_BYTES as c_int, 1, &mut p)
        };
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
        if p.is_null() {
            return Err(ffi::SQLITE_IOERR_SHMMAP);
        }
        Ok(Region { ptr: p as *mut u8, _shm: PhantomData })
    }

    /// Takes or releases wal-index locks (`SQLITE_SHM_*` flags), bypassing the write queue.
    pub fn lock(&self, ofst: u32, n: u32, flags: c_int) -> c_int {
        // SAFETY: the file is open; arguments are checked by the OS VFS.
        unsafe { (self.methods().xShmLock.expect("xShmLock"))(self.file, ofst as c_int, n as c_int, flags) }
    }

    /// A memory barrier on the mapping.
    pub fn barrier(&self) {
        // SAFETY: the file is open.
        unsafe { (self.methods().xShmBarrier.expect("xShmBarrier"))(self.file) }
    }
}

/// One mapped 32 KiB wal-index region. Offsets are checked; out-of-range access panics (a
/// programmer error: the layout is fixed).
pub struct Region<'s> {
    ptr: *mut u8,
    _shm: PhantomData<&'s ()>,
}

impl Region<'_> {
    fn check(off: usize, len: usize) {
        assert!(off.checked_add(len).is_some_and(|e| e <= SHM_REGION_BYTES), "wal-index access out of range");
    }

    /// Copies bytes out.
    pub fn read(&self, off: usize, out: &mut [u8]) {
        Self::check(off, out.len());
        // SAFETY: in range of the 32 KiB mapping, which stays mapped while the connection is
        // open; concurrent writers follow SQLite's lock protocol (the caller holds the locks).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), out.len()) };
    }

    /// Copies bytes in.
    pub fn write(&self, off: usize, data: &[u8]) {
        Self::check(off, data.len());
        // SAFETY: as in `read`; the caller holds the WAL write lock.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }

    /// Zeroes bytes.
    pub fn zero(&self, off: usize, len: usize) {
        Self::check(off, len);
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(self.ptr.add(off), 0, len) };
    }

    /// A native-endian u32 (4-aligned offset).
    pub fn u32(&self, off: usize) -> u32 {
        Self::check(off, 4);
        assert!(off % 4 == 0);
        // SAFETY: in range and aligned (the mapping is page-aligned).
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u32) }
    }

    /// Stores a native-endian u32 (4-aligned offset).
    pub fn set_u32(&self, off: usize, v: u32) {
        Self::check(off, 4);
        assert!(off % 4 == 0);
        // SAFETY: in range and aligned.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u32, v) };
    }

    /// A native-endian u16 (2-aligned offset).
    pub fn u16(&self, off: usize) -> u16 {
        Self::check(off, 2);
        assert!(off % 2 == 0);
        // SAFETY: in range and aligned.
        unsafe { std::ptr::read_volatile(self.ptr.add(off) as *const u16) }
    }

    /// Stores a native-endian u16 (2-aligned offset).
    pub fn set_u16(&self, off: usize, v: u16) {
        Self::check(off, 2);
        assert!(off % 2 == 0);
        // SAFETY: in range and aligned.
        unsafe { std::ptr::write_volatile(self.ptr.add(off) as *mut u16, v) };
    }
}

/// `count` random bytes from SQLite's PRNG.
pub fn randomness(out: &mut [u8]) {
    // SAFETY: `out` is a valid writable buffer of the given length.
    unsafe { ffi::sqlite3_randomness(out.len() as c_int, out.as_mut_ptr() as *mut c_void) };
}

/// `sqlite3_complete`: true if `sql` ends with a complete SQL statement.
pub fn is_complete_sql(sql: &str) -> bool {
    let Ok(c) = CString::new(sql) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { ffi::sqlite3_complete(c.as_ptr()) != 0 }
}
