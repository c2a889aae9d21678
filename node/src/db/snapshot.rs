//! Snapshots of every database at the applied index (format in `docs/data-directory.md`).
//!
//! `write` holds each database's WAL write lock while it streams the database file and the WAL
//! up to its last committed frame (neither can change meanwhile: only the apply thread, which is
//! the caller, checkpoints). `restore` installs an image atomically: everything is written into
//! `db.restore/`, fsynced, marked complete, and swapped with `db/` by renames.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use dqlite_raft::LogIndex;

use super::sidecar::{self, Sidecar};
use super::{entry, lock, wal, with_suffix, Applier, Databases, DbError};

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

fn stream_db(a: &Applier, out: &mut Crc<&mut dyn Write>) -> Result<(), DbError> {
    let started = std::time::Instant::now();
    let c = a.conn.conn();
    // Without waiting: a writer holding the lock may be waiting for this very thread to apply
    // its entry. The snapshot then fails at once and is taken again after a later entry.
    a.conn.set_busy_timeout(std::time::Duration::ZERO);
    let r = c.execute_batch("BEGIN IMMEDIATE");
    a.conn.set_busy_timeout(super::APPLY_BUSY_TIMEOUT);
    a.conn.end_statement();
    match r {
        Ok(()) => {}
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
            let _ = c.execute_batch("ROLLBACK");
            a.conn.end_statement();
            return Err(DbError::sql(
                libsqlite3_sys::SQLITE_BUSY,
                format!("database {} is being written: snapshot taken again later", a.shared.name),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let res = (|| {
        let shm = a.conn.shm().ok_or(DbError::Closed)?;
        let r0 = shm.region(0).map_err(|c| DbError::sql(c, "wal-index map failed"))?;
        let hdr = wal::read_hdr(&r0);
        let db_size = a.conn.db_file_size().map_err(|c| DbError::sql(c, "database size"))?;
        // A WAL wholly backfilled adds nothing the database file lacks: it is left out.
        let wal_size = if hdr.mx_frame == 0 || wal::n_backfill(&r0) >= hdr.mx_frame {
            0
        } else {
            32 + hdr.mx_frame as u64 * (24 + hdr.page_size() as u64)
        };
        let name = a.shared.name.as_bytes();
        out.write_all(&(name.len() as u16).to_le_bytes()).map_err(ioe)?;
        out.write_all(name).map_err(ioe)?;
        out.write_all(&db_size.to_le_bytes()).map_err(ioe)?;
        out.write_all(&wal_size.to_le_bytes()).map_err(ioe)?;
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0;
        while off < db_size {
            let n = CHUNK.min((db_size - off) as usize);
            a.conn.read_db_file(off, &mut buf[..n]).map_err(|c| DbError::sql(c, "reading the database file"))?;
            out.write_all(&buf[..n]).map_err(ioe)?;
            off += n as u64;
        }
        let mut off = 0;
        while off < wal_size {
            let n = CHUNK.min((wal_size - off) as usize);
            a.wal.read_exact_at(&mut buf[..n], off).map_err(ioe)?;
            out.write_all(&buf[..n]).map_err(ioe)?;
            off += n as u64;
        }
        Ok::<(u64, u64), DbError>((db_size, wal_size))
    })();
    let end = c.execute_batch("COMMIT");
    a.conn.end_statement();
    let (db_size, wal_size) = res?;
    end?;
    tracing::debug!(
        db = %a.shared.name, db_size, wal_size, lock_held_ms = started.elapsed().as_millis() as u64,
        "database copied into the snapshot"
    );
    Ok(())
}

/// Writes the image of every database.
pub(super) fn write(dbs: &mut Databases, out: &mut dyn Write) -> Result<(), DbError> {
    let names: Vec<String> = {
        let mut n: Vec<String> = lock(&dbs.node.dbs).keys().cloned().collect();
        n.sort();
        n
    };
    for n in &names {
        dbs.applier(n).map_err(|r| DbError::sql(libsqlite3_sys::SQLITE_IOERR, r))?;
    }
    let mut out = Crc { inner: out, crc: 0 };
    out.write_all(MAGIC).map_err(ioe)?;
    out.write_all(&VERSION.to_le_bytes()).map_err(ioe)?;
    out.write_all(&dbs.applied.0.to_le_bytes()).map_err(ioe)?;
    out.write_all(&(names.len() as u32).to_le_bytes()).map_err(ioe)?;
    for n in &names {
        let a = dbs.appliers.get(n).ok_or(DbError::Closed)?;
        stream_db(a, &mut out)?;
    }
    let crc = out.crc;
    out.inner.write_all(&crc.to_le_bytes()).map_err(ioe)?;
    Ok(())
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
