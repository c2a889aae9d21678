//! Snapshots of every database at the applied index (format in `docs/data-directory.md`).
//!
//! `begin` fixes a snapshot's point on the apply thread (each database file's size and the WAL
//! up to its last committed frame, at the applied index; no write lock) and suspends
//! checkpoints; [`ImageCopy::write`] then streams those bytes on any thread while entries go on
//! being applied (`docs/snapshots.md`). `restore` installs an image atomically: everything is
//! written into `db.restore/`, fsynced, marked complete, and swapped with `db/` by renames.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use dqlite_raft::LogIndex;

use super::sidecar::{self, Sidecar};
use super::{entry, lock, wal, with_suffix, Applier, Databases, DbError, DbShared};
use crate::vfs::VfsConnection;

const MAGIC: &[u8; 4] = b"DQSN";
const VERSION: u32 = 1;
const CHUNK: usize = 64 * 1024;

struct Crc<W> {
    inner: W,
    crc: u32,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn ioe(e: std::io::Error) -> DbError {
    DbError::Io { path: PathBuf::from("<snapshot stream>"), source: e }
}

/// How long the snapshot point waits for a local commit (applied, its writer still writing its
/// frames to the WAL) to be published in the wal-index.
const PUBLISH_WAIT: Duration = Duration::from_secs(5);

/// A snapshot copy in progress, shared by the copy and the state machine: while it runs, no
/// checkpoint touches the database files (`Databases::copying`).
#[derive(Default)]
pub(super) struct CopyCtl {
    cancel: AtomicBool,
    done: Mutex<bool>,
    cv: Condvar,
}

impl CopyCtl {
    fn finish(&self) {
        *lock(&self.done) = true;
        self.cv.notify_all();
    }

    pub(super) fn is_done(&self) -> bool {
        *lock(&self.done)
    }

    /// Stops the copy (it fails at its next piece) and waits until it released the files.
    pub(super) fn cancel_and_wait(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let mut done = lock(&self.done);
        while !*done {
            done = match self.cv.wait(done) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    fn check(&self) -> Result<(), DbError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(DbError::sql(
                libsqlite3_sys::SQLITE_ABORT,
                "snapshot copy cancelled (a snapshot is being installed or the node stops)",
            ));
        }
        Ok(())
    }
}

/// One database's part of a snapshot: what to copy, and the handles to copy it through.
struct DbPart {
    name: String,
    /// A connection of its own: the database file is read through SQLite's descriptor (closing
    /// a second descriptor of the file would drop the process's POSIX locks on it).
    conn: VfsConnection,
    db_size: u64,
    wal: Option<File>,
    wal_size: u64,
}

/// A snapshot whose point is fixed: the extent of every database file and WAL at the applied
/// index. Until it is dropped no checkpoint writes the database files, and WAL frames up to
/// the fixed extent cannot change (a WAL restart needs a wholly backfilled WAL, and such a WAL
/// is left out), so [`ImageCopy::write`] copies exactly the bytes the files held at that index,
/// on any thread, while entries go on being applied.
pub struct ImageCopy {
    index: LogIndex,
    parts: Vec<DbPart>,
    ctl: Arc<CopyCtl>,
    #[cfg(feature = "harness")]
    dir: PathBuf,
}

impl Drop for ImageCopy {
    fn drop(&mut self) {
        // Close the connections first: checkpoints resume once `finish` says so.
        self.parts.clear();
        self.ctl.finish();
    }
}

/// Waits (bounded) until no applied local commit of `d` is still being published by its writer.
fn wait_published(d: &DbShared) -> Result<(), DbError> {
    let (st, published) = d.wait_published(lock(&d.st), Instant::now() + PUBLISH_WAIT);
    drop(st);
    if !published {
        return Err(DbError::sql(
            libsqlite3_sys::SQLITE_BUSY,
            format!("database {}: a commit is still being published: snapshot taken again later", d.name),
        ));
    }
    Ok(())
}

/// The database file size and the WAL bytes to copy, at the applied index. Called on the apply
/// thread between entries: nothing is applied meanwhile, and a local commit's frames reach the
/// WAL only once the apply thread applied its entry, so the wal-index is still.
fn fix_point(a: &Applier) -> Result<(u64, u64), DbError> {
    wait_published(&a.shared)?;
    let shm = a.conn.shm().ok_or(DbError::Closed)?;
    let r0 = shm.region(0).map_err(|c| DbError::sql(c, "wal-index map failed"))?;
    // nBackfill first: a leader writer may restart a wholly backfilled WAL right now (it resets
    // mxFrame, then nBackfill), and this order sees that WAL as wholly backfilled either way.
    let backfill = wal::n_backfill(&r0);
    let mx_frame = wal::mx_frame(&r0);
    let page_size = wal::read_hdr(&r0).page_size() as u64;
    let db_size = a.conn.db_file_size().map_err(|c| DbError::sql(c, "database size"))?;
    // A WAL wholly backfilled adds nothing the database file lacks: it is left out.
    let wal_size = if mx_frame == 0 || backfill >= mx_frame { 0 } else { 32 + mx_frame as u64 * (24 + page_size) };
    Ok((db_size, wal_size))
}

/// Fixes the point of a snapshot of every database at the applied index (on the apply thread;
/// short: no copying, no write lock). Checkpoints stay suspended until the copy is dropped.
pub(super) fn begin(dbs: &mut Databases) -> Result<ImageCopy, DbError> {
    if dbs.copying() {
        return Err(DbError::sql(libsqlite3_sys::SQLITE_BUSY, "a snapshot copy is already running"));
    }
    let names: Vec<String> = {
        let mut n: Vec<String> = lock(&dbs.node.dbs).keys().cloned().collect();
        n.sort();
        n
    };
    for n in &names {
        // A bulk checkpoint must not change the database file under the copy.
        dbs.applier(n).map_err(|r| DbError::sql(libsqlite3_sys::SQLITE_IOERR, r))?.join_bulk();
    }
    let ctl = Arc::new(CopyCtl::default());
    let mut parts = Vec::with_capacity(names.len());
    for name in names {
        let a = dbs.appliers.get(&name).ok_or(DbError::Closed)?;
        let (db_size, wal_size) = fix_point(a)?;
        let conn = dbs.node.open_conn(&a.shared, false, dbs.node.config.busy_timeout)?;
        // Never checkpoint from this connection, even if it were the last one to close.
        conn.conn().set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        let wal = if wal_size > 0 {
            let p = a.shared.wal_path();
            Some(File::open(&p).map_err(super::io_err(&p))?)
        } else {
            None
        };
        parts.push(DbPart { name, conn, db_size, wal, wal_size });
    }
    dbs.copy = Some(ctl.clone());
    Ok(ImageCopy {
        index: dbs.applied,
        parts,
        ctl,
        #[cfg(feature = "harness")]
        dir: dbs.node.dir.clone(),
    })
}

impl ImageCopy {
    /// The applied index the image is at.
    pub fn index(&self) -> LogIndex {
        self.index
    }

    /// Writes the image (format: `docs/data-directory.md`) in 64 KiB pieces.
    pub fn write(self, out: &mut dyn Write) -> Result<(), DbError> {
        let started = Instant::now();
        let mut out = Crc { inner: out, crc: 0 };
        out.write_all(MAGIC).map_err(ioe)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(ioe)?;
        out.write_all(&self.index.0.to_le_bytes()).map_err(ioe)?;
        out.write_all(&(self.parts.len() as u32).to_le_bytes()).map_err(ioe)?;
        let mut buf = vec![0u8; CHUNK];
        for (i, p) in self.parts.iter().enumerate() {
            let name = p.name.as_bytes();
            out.write_all(&(name.len() as u16).to_le_bytes()).map_err(ioe)?;
            out.write_all(name).map_err(ioe)?;
            out.write_all(&p.db_size.to_le_bytes()).map_err(ioe)?;
            out.write_all(&p.wal_size.to_le_bytes()).map_err(ioe)?;
            let mut off = 0;
            while off < p.db_size {
                self.ctl.check()?;
                let n = CHUNK.min((p.db_size - off) as usize);
                p.conn.read_db_file(off, &mut buf[..n]).map_err(|c| DbError::sql(c, "reading the database file"))?;
                out.write_all(&buf[..n]).map_err(ioe)?;
                off += n as u64;
                if i == 0 && off == n as u64 {
                    self.gate()?;
                }
            }
            let mut off = 0;
            while let (Some(wal), true) = (&p.wal, off < p.wal_size) {
                self.ctl.check()?;
                let n = CHUNK.min((p.wal_size - off) as usize);
                wal.read_exact_at(&mut buf[..n], off).map_err(ioe)?;
                out.write_all(&buf[..n]).map_err(ioe)?;
                off += n as u64;
            }
            tracing::debug!(db = %p.name, db_size = p.db_size, wal_size = p.wal_size, "database copied into the snapshot");
        }
        let crc = out.crc;
        out.inner.write_all(&crc.to_le_bytes()).map_err(ioe)?;
        tracing::debug!(index = self.index.0, copy_ms = started.elapsed().as_millis() as u64, "snapshot image written");
        Ok(())
    }

    #[cfg(feature = "harness")]
    fn gate(&self) -> Result<(), DbError> {
        let Some(g) = lock(gates()).get(&self.dir).cloned() else { return Ok(()) };
        let mut st = lock(&g.st);
        st.paused_at = Some(self.index);
        g.cv.notify_all();
        while !st.released {
            drop(st);
            self.ctl.check()?;
            st = lock(&g.st);
            st = match g.cv.wait_timeout(st, Duration::from_millis(20)) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
        Ok(())
    }

    #[cfg(not(feature = "harness"))]
    fn gate(&self) -> Result<(), DbError> {
        Ok(())
    }
}

/// Test support (feature `harness`): holds the snapshot copies of one node.
#[cfg(feature = "harness")]
#[derive(Default)]
pub struct CopyGate {
    st: Mutex<GateState>,
    cv: Condvar,
}

#[cfg(feature = "harness")]
#[derive(Default)]
struct GateState {
    paused_at: Option<LogIndex>,
    released: bool,
}

#[cfg(feature = "harness")]
fn gates() -> &'static Mutex<std::collections::HashMap<PathBuf, Arc<CopyGate>>> {
    static GATES: std::sync::OnceLock<Mutex<std::collections::HashMap<PathBuf, Arc<CopyGate>>>> =
        std::sync::OnceLock::new();
    GATES.get_or_init(Default::default)
}

/// Test support (feature `harness`): every snapshot copy of the node whose data directory is
/// `data_dir` stops after its first 64 KiB piece (the point is fixed, the copy under way)
/// until [`CopyGate::release`]. The gate is removed when released.
#[cfg(feature = "harness")]
pub fn hold_snapshot_copies(data_dir: &Path) -> Arc<CopyGate> {
    let dir = data_dir.join("db");
    let dir = dir.canonicalize().unwrap_or(dir);
    let g = Arc::new(CopyGate::default());
    lock(gates()).insert(dir, g.clone());
    g
}

#[cfg(feature = "harness")]
impl CopyGate {
    /// Waits until a copy is held; returns the index of its image.
    pub fn wait_held(&self, timeout: Duration) -> Option<LogIndex> {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.st);
        loop {
            if let Some(i) = st.paused_at {
                return Some(i);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = match self.cv.wait_timeout(st, deadline - now) {
                Ok((s, _)) => s,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Lets every held copy go on, and later ones pass.
    pub fn release(&self) {
        lock(&self.st).released = true;
        self.cv.notify_all();
        lock(gates()).retain(|_, g| !std::ptr::eq(&**g, self));
    }
}

/// Writes the image of every database at the applied index, on the calling thread.
pub(super) fn write(dbs: &mut Databases, out: &mut dyn Write) -> Result<LogIndex, DbError> {
    let copy = begin(dbs)?;
    let index = copy.index();
    copy.write(out)?;
    Ok(index)
}

struct CrcReader<'a> {
    inner: &'a mut dyn Read,
    crc: u32,
}

impl CrcReader<'_> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), DbError> {
        self.inner.read_exact(buf).map_err(ioe)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }
    fn u64(&mut self) -> Result<u64, DbError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }
}

fn bad(reason: impl Into<String>) -> DbError {
    DbError::Damaged { path: PathBuf::from("<snapshot>"), reason: reason.into() }
}

fn copy_to(r: &mut CrcReader<'_>, path: &Path, mut len: u64) -> Result<(), DbError> {
    let mut f = File::create(path).map_err(super::io_err(path))?;
    let mut buf = vec![0u8; CHUNK];
    while len > 0 {
        let n = CHUNK.min(len as usize);
        r.exact(&mut buf[..n])?;
        f.write_all(&buf[..n]).map_err(super::io_err(path))?;
        len -= n as u64;
    }
    f.sync_all().map_err(super::io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), DbError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(super::io_err(dir))
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    with_suffix(dir, suffix)
}

/// Completes or discards a restore that a crash interrupted.
pub(super) fn finish_interrupted_restore(dir: &Path) -> Result<(), DbError> {
    let staging = sibling(dir, ".restore");
    let old = sibling(dir, ".old");
    // `Databases::open` may have created an empty `dir` already: that is no state.
    let dir_missing = match fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(super::io_err(dir)(e)),
    };
    if staging.join("COMPLETE").exists() && dir_missing && old.exists() {
        if dir.exists() {
            fs::remove_dir(dir).map_err(super::io_err(dir))?;
        }
        // Crashed between the two renames: the new state is complete, install it.
        fs::rename(&staging, dir).map_err(super::io_err(dir))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(super::io_err(&staging))?;
    }
    if old.exists() {
        fs::remove_dir_all(&old).map_err(super::io_err(&old))?;
    }
    let _ = fs::remove_file(dir.join("COMPLETE"));
    Ok(())
}

/// Installs an image written by `write` at `index`.
pub(super) fn restore(dbs: &mut Databases, index: LogIndex, data: &mut dyn Read) -> Result<(), DbError> {
    // A copy of the old state still under way reads the files about to be replaced.
    if let Some(c) = dbs.copy.take() {
        c.cancel_and_wait();
    }
    let dir = dbs.node.dir.clone();
    let staging = sibling(&dir, ".restore");
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(super::io_err(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(super::io_err(&staging))?;
    let mut r = CrcReader { inner: data, crc: 0 };
    let mut magic = [0u8; 4];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(bad("bad magic"));
    }
    let mut v = [0u8; 4];
    r.exact(&mut v)?;
    if u32::from_le_bytes(v) != VERSION {
        return Err(bad("unsupported snapshot version"));
    }
    let at = LogIndex(r.u64()?);
    if at != index {
        return Err(bad(format!("snapshot is at index {at}, expected {index}")));
    }
    let mut n = [0u8; 4];
    r.exact(&mut n)?;
    let count = u32::from_le_bytes(n);
    let mut installed = Vec::new();
    for _ in 0..count {
        let mut l = [0u8; 2];
        r.exact(&mut l)?;
        let mut name = vec![0u8; u16::from_le_bytes(l) as usize];
        r.exact(&mut name)?;
        let name = String::from_utf8(name).map_err(|_| bad("database name is not UTF-8"))?;
        if !entry::valid_name(&name) {
            return Err(bad(format!("invalid database name {name:?}")));
        }
        let db_size = r.u64()?;
        let wal_size = r.u64()?;
        let db_path = staging.join(&name);
        copy_to(&mut r, &db_path, db_size)?;
        copy_to(&mut r, &with_suffix(&db_path, "-wal"), wal_size)?;
        installed.push(name);
        crash_point(1)?;
    }
    let computed = r.crc;
    let mut c = [0u8; 4];
    r.inner.read_exact(&mut c).map_err(ioe)?;
    if u32::from_le_bytes(c) != computed {
        return Err(bad("snapshot checksum mismatch"));
    }
    for name in &installed {
        let db_path = staging.join(name);
        let scan = wal::scan_all(&with_suffix(&db_path, "-wal")).map_err(|e| bad(e.to_string()))?;
        let sc = Sidecar {
            salts: scan.salts,
            prev_salts: [0; 8],
            gen_first: index.next(),
            ckpt_index: index,
            ckpt_commits: scan.commits.len() as u64,
        };
        sc.write(&super::sidecar_path(&db_path)).map_err(|e| bad(e.to_string()))?;
    }
    super::write_base(&staging, index)?;
    crash_point(2)?;
    File::create(staging.join("COMPLETE")).and_then(|f| f.sync_all()).map_err(super::io_err(&staging))?;
    sync_dir(&staging)?;
    crash_point(3)?;
    // Close everything of the old state. The map of databases stays locked until the new
    // state is open: a connection opened meanwhile would read the old sidecars (a stale
    // `DbShared` that the reopen below would then pick up) or the old files.
    dbs.appliers.clear();
    let node = dbs.node.clone();
    let mut map = lock(&node.dbs);
    map.clear();
    let old = sibling(&dir, ".old");
    let dir_str = dir.to_str().ok_or_else(|| bad("the data directory's path is not UTF-8"))?;
    // Connections opened on the old files are refused a wal-index from here on (`replace_dir`).
    crate::vfs::replace_dir(dir_str, || {
        fs::rename(&dir, &old).map_err(super::io_err(&dir))?;
        crash_point(4)?;
        fs::rename(&staging, &dir).map_err(super::io_err(&dir))?;
        crash_point(5)
    })?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    crash_point(6)?;
    fs::remove_dir_all(&old).map_err(super::io_err(&old))?;
    crash_point(7)?;
    let _ = fs::remove_file(dir.join("COMPLETE"));
    // Reopen.
    dbs.applied = index;
    dbs.node.applied.store(index.0, std::sync::atomic::Ordering::SeqCst);
    for name in installed {
        let shared = node.db_in(&mut map, &name)?;
        let mut a = Applier::open(&node, shared)?;
        a.recover()?;
        dbs.appliers.insert(name, a);
    }
    drop(map);
    let _ = sidecar::sync_dir(&dir.join("x"));
    Ok(())
}

/// The last step of [`restore`] at which [`inject_restore_crash`] can stop it.
#[cfg(feature = "harness")]
pub const RESTORE_CRASH_POINTS: u32 = 7;

#[cfg(feature = "harness")]
thread_local! {
    static CRASH_AT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Test support (feature `harness`): the next snapshot restore **on the calling thread** stops
/// at step `point` (1 ..= [`RESTORE_CRASH_POINTS`]) as a process crash would, leaving its files
/// as they are; 0 disables. Reopen the data directory afterwards to see what a restart finds.
#[cfg(feature = "harness")]
pub fn inject_restore_crash(point: u32) {
    CRASH_AT.with(|c| c.set(point));
}

#[cfg(feature = "harness")]
fn crash_point(n: u32) -> Result<(), DbError> {
    if n != 0 && CRASH_AT.with(|c| c.replace(if c.get() == n { 0 } else { c.get() })) == n {
        tracing::warn!(point = n, "injected crash during a snapshot restore");
        return Err(DbError::Io {
            path: PathBuf::from("<injected crash>"),
            source: std::io::Error::other(format!("injected crash at restore step {n}")),
        });
    }
    Ok(())
}

#[cfg(not(feature = "harness"))]
fn crash_point(_: u32) -> Result<(), DbError> {
    Ok(())
}
