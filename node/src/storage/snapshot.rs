//! Snapshot files and their metadata (layout: `docs/log-format.md`).
//!
//! Writing a snapshot: data to `snapshot-I-T.tmp`, `fdatasync`; metadata to
//! `snapshot-I-T.meta.tmp`, `fdatasync`; rename the data, directory `fsync`; rename the
//! metadata, directory `fsync`. A snapshot exists once its `.meta` file does. Then every
//! snapshot but the newest two is removed (metadata first). On open, `*.tmp` files and data
//! files without metadata (an interrupted write or removal) are deleted.
//!
//! Data arrives all at once ([`SnapshotStore::write`]), streamed by another thread into a
//! [`SnapshotWriter`] from a [`SnapshotSpool`] and then committed ([`SnapshotStore::commit_local`],
//! a snapshot taken locally), or in chunks from a leader ([`SnapshotStore::receive_chunk`] then
//! [`SnapshotStore::finish_receive`]). It is read back in bounded pieces through a
//! [`SnapshotReader`] (never whole), so no path holds a whole snapshot in memory.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dqlite_raft::{LogIndex, Term};

use super::backend::{Backend, BackendFile, BatchFailure, OpenMode};
use super::error::{CorruptReason, InvalidRequest, Result, StorageError};
use super::format::{self, SegmentHeaderError, SnapshotMetaFields};
use super::{open_and_read, Poison};

/// How many snapshots are kept.
pub const SNAPSHOTS_KEPT: usize = 2;
const CHUNK: usize = 1024 * 1024;

/// What a stored snapshot is a snapshot of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The last log index it includes.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The index of the entry that carried `configuration` (0 if it was never in a log).
    pub configuration_index: LogIndex,
    /// The cluster configuration at `index`, encoded by the Raft core (opaque here).
    pub configuration: Vec<u8>,
    /// Length of the data in bytes (filled in when the snapshot is written).
    pub data_len: u64,
    /// CRC32C of the data (filled in when the snapshot is written).
    pub data_crc: u32,
}

impl SnapshotInfo {
    /// Metadata for a snapshot to be written (`data_len`/`data_crc` are computed on write).
    pub fn new(index: LogIndex, term: Term, configuration_index: LogIndex, configuration: Vec<u8>) -> Self {
        SnapshotInfo { index, term, configuration_index, configuration, data_len: 0, data_crc: 0 }
    }
}

fn data_name(index: LogIndex, term: Term) -> String {
    format!("snapshot-{:020}-{:020}", index.0, term.0)
}

fn parse_name(name: &str) -> Option<(LogIndex, Term, bool)> {
    let rest = name.strip_prefix("snapshot-")?;
    let (rest, is_meta) = match rest.strip_suffix(".meta") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (i, t) = rest.split_once('-')?;
    if i.len() != 20 || t.len() != 20 {
        return None;
    }
    Some((LogIndex(i.parse().ok()?), Term(t.parse().ok()?), is_meta))
}

/// A snapshot whose data is being written.
struct Incoming {
    info: SnapshotInfo,
    file: Box<dyn BackendFile>,
    tmp_name: String,
    written: u64,
    crc: u32,
    /// The data is already durable (a local snapshot synced by its writer).
    synced: bool,
}

/// The prefix of the temporary file of a snapshot being taken locally
/// (`snapshot-local-<n>.tmp`, `n` unique in the process, so that a writer left over by an
/// earlier incarnation of the node never touches a later one's file).
const LOCAL_TMP_PREFIX: &str = "snapshot-local-";
static NEXT_LOCAL: AtomicU64 = AtomicU64::new(1);

#[cfg(test)]
fn is_local_tmp(name: &str) -> bool {
    name.starts_with(LOCAL_TMP_PREFIX) && name.ends_with(".tmp")
}

/// Creates and opens snapshot files from threads other than the store's owner (the apply
/// thread streams a local snapshot into one; the restore reads one back), recording the largest
/// single buffer passed through them in `max_buffer`.
#[derive(Debug, Clone)]
pub struct SnapshotSpool {
    backend: Arc<dyn Backend>,
    max_buffer: Arc<AtomicU64>,
}

impl SnapshotSpool {
    /// Starts the data file of a snapshot taken locally (replacing a leftover one). Commit it
    /// with [`SnapshotStore::commit_local`]; dropped uncommitted, it is removed.
    pub fn create(&self) -> io::Result<SnapshotWriter> {
        let name = format!("{LOCAL_TMP_PREFIX}{}.tmp", NEXT_LOCAL.fetch_add(1, Ordering::Relaxed));
        let file = match self.backend.open(&name, OpenMode::CreateNew) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.backend.remove(&name)?;
                self.backend.open(&name, OpenMode::CreateNew)?
            }
            Err(e) => return Err(e),
        };
        Ok(SnapshotWriter {
            backend: self.backend.clone(),
            name,
            file: Some(file),
            written: 0,
            crc: 0,
            synced: false,
            max_buffer: self.max_buffer.clone(),
        })
    }

    /// Opens a stored snapshot's data for reading from the start.
    pub fn open(&self, info: &SnapshotInfo) -> io::Result<SnapshotReader> {
        let name = data_name(info.index, info.term);
        let file = self.backend.open(&name, OpenMode::Existing)?;
        Ok(SnapshotReader { file, name, pos: 0, end: info.data_len, max_buffer: self.max_buffer.clone() })
    }
}

/// The data of a snapshot being taken locally (see [`SnapshotSpool::create`]). Every `write`
/// goes straight to the file: nothing is buffered here.
#[derive(Debug)]
pub struct SnapshotWriter {
    backend: Arc<dyn Backend>,
    name: String,
    file: Option<Box<dyn BackendFile>>,
    written: u64,
    crc: u32,
    /// Every byte written so far is durable ([`SnapshotWriter::sync`]).
    synced: bool,
    max_buffer: Arc<AtomicU64>,
}

impl SnapshotWriter {
    /// Makes what was written durable (`fdatasync`), on the caller's thread: the thread that
    /// wrote the image syncs it, so that [`SnapshotStore::commit_local`], which runs on the
    /// storage thread between log appends, has only the small metadata file and the renames
    /// left to sync. A failure leaves the writer unsynced; dropped, its file is removed, so a
    /// failed `fdatasync` is never retried on the same pages.
    pub fn sync(&mut self) -> io::Result<()> {
        let Some(f) = self.file.as_mut() else { return Err(io::Error::other("snapshot writer already committed")) };
        f.sync()?;
        self.synced = true;
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(f) = self.file.as_mut() else { return Err(io::Error::other("snapshot writer already committed")) };
        self.max_buffer.fetch_max(buf.len() as u64, Ordering::Relaxed);
        self.synced = false;
        f.write_at(self.written, buf)?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not committed: the next open removes it if this fails.
            let _ = self.backend.remove(&self.name);
        }
    }
}

/// Reads a stored snapshot's data in the caller's buffers (see [`SnapshotSpool::open`]).
#[derive(Debug)]
pub struct SnapshotReader {
    file: Box<dyn BackendFile>,
    name: String,
    pos: u64,
    end: u64,
    max_buffer: Arc<AtomicU64>,
}

impl SnapshotReader {
    /// Starts again from the first byte, reading no further than `end`.
    pub fn rewind(&mut self, end: u64) {
        self.pos = 0;
        self.end = end;
    }

    /// The file's name (for error messages).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.max_buffer.fetch_max(n as u64, Ordering::Relaxed);
        self.file.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Durable snapshots, newest two kept.
pub struct SnapshotStore {
    backend: Arc<dyn Backend>,
    poison: Arc<Poison>,
    /// Complete snapshots, oldest first.
    snapshots: Vec<SnapshotInfo>,
    incoming: Option<Incoming>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("snapshots", &self.snapshots)
            .field("receiving", &self.incoming.as_ref().map(|i| (i.info.index, i.written)))
            .finish()
    }
}

impl SnapshotStore {
    pub(crate) fn open(backend: Arc<dyn Backend>, poison: Arc<Poison>) -> Result<SnapshotStore> {
        let names = backend.list().map_err(|e| StorageError::io("list", &backend.describe(), e))?;
        let mut removed = false;
        let mut snapshots = Vec::new();
        for name in &names {
            if name.starts_with("snapshot-") && name.ends_with(".tmp") {
                backend.remove(name).map_err(|e| poison.write_error("remove", name, e))?;
                removed = true;
                continue;
            }
            let Some((index, term, true)) = parse_name(name) else { continue };
            let (_, buf) = open_and_read(&*backend, name)?;
            let f = format::decode_snapshot_meta(&buf).map_err(|e| match e {
                SegmentHeaderError::Corrupt(reason) => StorageError::Corrupt { file: name.clone(), offset: 0, reason },
                SegmentHeaderError::Version(version) => {
                    StorageError::UnsupportedVersion { file: name.clone(), version }
                }
            })?;
            if f.index != index || f.term != term {
                return Err(StorageError::Corrupt {
                    file: name.clone(),
                    offset: 0,
                    reason: CorruptReason::WrongSegment,
                });
            }
            let dname = data_name(index, term);
            let dlen = backend
                .open(&dname, OpenMode::Existing)
                .and_then(|f| f.len())
                .map_err(|e| StorageError::io("open", &dname, e))?;
            if dlen != f.data_len {
                return Err(StorageError::Corrupt {
                    file: dname,
                    offset: dlen.min(f.data_len),
                    reason: CorruptReason::SnapshotData,
                });
            }
            snapshots.push(SnapshotInfo {
                index,
                term,
                configuration_index: f.configuration_index,
                configuration: f.configuration,
                data_len: f.data_len,
                data_crc: f.data_crc,
            });
        }
        // Data without metadata: an interrupted write or removal.
        for name in &names {
            if let Some((index, term, false)) = parse_name(name) {
                if !snapshots.iter().any(|s| s.index == index && s.term == term) {
                    tracing::warn!(file = %name, "removing snapshot data without metadata");
                    backend.remove(name).map_err(|e| poison.write_error("remove", name, e))?;
                    removed = true;
                }
            }
        }
        if removed {
            let dir = backend.describe();
            backend.sync_dir().map_err(|e| poison.sync_error(&dir, e))?;
        }
        snapshots.sort_by_key(|s| (s.index, s.term));
        Ok(SnapshotStore { backend, poison, snapshots, incoming: None })
    }

    /// The newest complete snapshot.
    pub fn latest(&self) -> Option<&SnapshotInfo> {
        self.snapshots.last()
    }

    /// All complete snapshots, oldest first (at most [`SNAPSHOTS_KEPT`]).
    pub fn list(&self) -> &[SnapshotInfo] {
        &self.snapshots
    }

    fn sync_dir(&self) -> Result<()> {
        let dir = self.backend.describe();
        self.backend.sync_dir().map_err(|e| self.poison.sync_error(&dir, e))
    }

    /// Writes a whole snapshot durably from `data` and returns its completed metadata. Older
    /// snapshots beyond the newest [`SNAPSHOTS_KEPT`] are removed.
    pub fn write(&mut self, info: SnapshotInfo, data: &mut dyn Read) -> Result<SnapshotInfo> {
        self.begin(info)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.abort();
                    return Err(StorageError::io("read snapshot source", "", e));
                }
            };
            self.append_data(&buf[..n])?;
        }
        self.finish_receive()
    }

    /// Stores one chunk of a snapshot being received. A chunk at offset 0 starts a new snapshot
    /// (discarding any partial one); every other chunk must continue the current one exactly
    /// (same index and term, `offset` = bytes received so far).
    pub fn receive_chunk(&mut self, info: &SnapshotInfo, offset: u64, data: &[u8]) -> Result<()> {
        if offset == 0 {
            self.begin(info.clone())?;
        } else {
            match &self.incoming {
                Some(inc) if inc.info.index == info.index && inc.info.term == info.term && inc.written == offset => {}
                _ => return Err(StorageError::Invalid(InvalidRequest::SnapshotChunkOutOfOrder)),
            }
        }
        self.append_data(data)
    }

    /// A spool for writing and reading snapshot data on other threads.
    pub fn spool(&self, max_buffer: Arc<AtomicU64>) -> SnapshotSpool {
        SnapshotSpool { backend: self.backend.clone(), max_buffer }
    }

    /// Makes a snapshot streamed into `data` (from [`SnapshotSpool::create`]) durable and
    /// current under `info`; returns its completed metadata. A receive in progress is kept.
    pub fn commit_local(&mut self, info: SnapshotInfo, mut data: SnapshotWriter) -> Result<SnapshotInfo> {
        self.poison.check()?;
        let Some(file) = data.file.take() else {
            return Err(StorageError::Invalid(InvalidRequest::SnapshotChunkOutOfOrder));
        };
        let tmp_name = std::mem::take(&mut data.name);
        let inc = Incoming { info, file, tmp_name, written: data.written, crc: data.crc, synced: data.synced };
        self.complete(inc)
    }

    /// Makes the snapshot received through [`SnapshotStore::receive_chunk`] durable and
    /// current; returns its completed metadata.
    pub fn finish_receive(&mut self) -> Result<SnapshotInfo> {
        self.poison.check()?;
        let Some(inc) = self.incoming.take() else {
            return Err(StorageError::Invalid(InvalidRequest::SnapshotChunkOutOfOrder));
        };
        self.complete(inc)
    }

    fn complete(&mut self, mut inc: Incoming) -> Result<SnapshotInfo> {
        let dtmp = inc.tmp_name.clone();
        if !inc.synced {
            inc.file.sync().map_err(|e| self.poison.sync_error(&dtmp, e))?;
        }
        drop(inc.file);
        let dname = data_name(inc.info.index, inc.info.term);
        let mname = format!("{dname}.meta");
        let mtmp = format!("{mname}.tmp");
        let done = SnapshotInfo { data_len: inc.written, data_crc: inc.crc, ..inc.info };
        let bytes = format::encode_snapshot_meta(&SnapshotMetaFields {
            index: done.index,
            term: done.term,
            configuration_index: done.configuration_index,
            data_len: done.data_len,
            data_crc: done.data_crc,
            configuration: done.configuration.clone(),
        });
        let mut mf = self.create_fresh(&mtmp)?;
        mf.write_all_sync(&[(0, &bytes)]).map_err(|f| match f {
            BatchFailure::Write(e) => self.poison.write_error("write", &mtmp, e),
            BatchFailure::Sync(e) => self.poison.sync_error(&mtmp, e),
        })?;
        drop(mf);
        self.backend.rename(&dtmp, &dname).map_err(|e| self.poison.write_error("rename", &dtmp, e))?;
        self.sync_dir()?;
        self.backend.rename(&mtmp, &mname).map_err(|e| self.poison.write_error("rename", &mtmp, e))?;
        self.sync_dir()?;
        self.snapshots.retain(|s| !(s.index == done.index && s.term == done.term));
        self.snapshots.push(done.clone());
        self.snapshots.sort_by_key(|s| (s.index, s.term));
        while self.snapshots.len() > SNAPSHOTS_KEPT {
            let old = self.snapshots.remove(0);
            let d = data_name(old.index, old.term);
            let m = format!("{d}.meta");
            self.backend.remove(&m).map_err(|e| self.poison.write_error("remove", &m, e))?;
            self.sync_dir()?;
            self.backend.remove(&d).map_err(|e| self.poison.write_error("remove", &d, e))?;
            self.sync_dir()?;
        }
        tracing::debug!(index = %done.index, term = %done.term, bytes = done.data_len, "snapshot written");
        Ok(done)
    }

    /// Creates `name`, removing a leftover of an earlier failed attempt first.
    fn create_fresh(&self, name: &str) -> Result<Box<dyn BackendFile>> {
        match self.backend.open(name, OpenMode::CreateNew) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.backend.remove(name).map_err(|e| self.poison.write_error("remove", name, e))?;
                self.backend.open(name, OpenMode::CreateNew).map_err(|e| self.poison.write_error("create", name, e))
            }
            Err(e) => Err(self.poison.write_error("create", name, e)),
        }
    }

    fn begin(&mut self, info: SnapshotInfo) -> Result<()> {
        self.poison.check()?;
        self.abort();
        let tmp_name = format!("{}.tmp", data_name(info.index, info.term));
        let file = self.create_fresh(&tmp_name)?;
        self.incoming = Some(Incoming { info, file, tmp_name, written: 0, crc: 0, synced: false });
        Ok(())
    }

    fn append_data(&mut self, data: &[u8]) -> Result<()> {
        self.poison.check()?;
        let Some(inc) = self.incoming.as_mut() else {
            return Err(StorageError::Invalid(InvalidRequest::SnapshotChunkOutOfOrder));
        };
        if let Err(e) = inc.file.write_at(inc.written, data) {
            let name = inc.tmp_name.clone();
            self.abort();
            return Err(self.poison.write_error("write", &name, e));
        }
        inc.crc = crc32c::crc32c_append(inc.crc, data);
        inc.written += data.len() as u64;
        Ok(())
    }

    /// Drops a partial snapshot (its temporary file is removed now or on the next open).
    fn abort(&mut self) {
        if let Some(inc) = self.incoming.take() {
            drop(inc.file);
            if self.backend.remove(&inc.tmp_name).is_ok() {
                // A failed directory sync poisons the store; the next write reports it.
                let _ = self.sync_dir();
            } else {
                tracing::debug!(file = %inc.tmp_name, "partial snapshot left for removal at next open");
            }
        }
    }

    /// Reads a whole snapshot's data, checking it against its metadata (tests and small
    /// snapshots; the runtime streams through [`SnapshotSpool::open`]).
    pub fn read(&self, info: &SnapshotInfo) -> Result<Vec<u8>> {
        let (name, f) = self.open_data(info)?;
        let mut buf = vec![0u8; info.data_len as usize];
        f.read_at(0, &mut buf).map_err(|e| StorageError::io("read", &name, e))?;
        if crc32c::crc32c(&buf) != info.data_crc {
            return Err(StorageError::Corrupt { file: name, offset: 0, reason: CorruptReason::SnapshotData });
        }
        Ok(buf)
    }

    /// Reads up to `buf.len()` bytes of a snapshot's data at `offset` (for streaming it to a
    /// follower in chunks; the runtime frames every image with a length + CRC32C trailer that the
    /// receiver checks before installing, `docs/runtime.md`). Returns the count read.
    pub fn read_chunk(&self, info: &SnapshotInfo, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let (name, f) = self.open_data(info)?;
        let n = (info.data_len.saturating_sub(offset) as usize).min(buf.len());
        f.read_at(offset, &mut buf[..n]).map_err(|e| StorageError::io("read", &name, e))?;
        Ok(n)
    }

    /// Opens a snapshot's data file; returns its name with it for error messages.
    fn open_data(&self, info: &SnapshotInfo) -> Result<(String, Box<dyn BackendFile>)> {
        let name = data_name(info.index, info.term);
        let f = self.backend.open(&name, OpenMode::Existing).map_err(|e| StorageError::io("open", &name, e))?;
        Ok((name, f))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use dqlite_raft::{LogIndex, Term};

    use super::SnapshotInfo;
    use crate::storage::backend::{Backend, CrashMode, MemBackend};
    use crate::storage::{Storage, StorageOptions};

    #[test]
    fn a_local_snapshot_streams_through_the_spool_and_reads_back_in_bounded_pieces() {
        let backend = Arc::new(MemBackend::new());
        let mut s = Storage::open(backend.clone(), StorageOptions::default()).unwrap();
        let max = Arc::new(AtomicU64::new(0));
        let spool = s.snapshots.spool(max.clone());
        // A receive in progress is not disturbed by a local commit.
        let incoming = SnapshotInfo::new(LogIndex(9), Term(2), LogIndex(1), vec![1]);
        s.snapshots.receive_chunk(&incoming, 0, b"partial").unwrap();

        let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = spool.create().unwrap();
        for piece in payload.chunks(4096) {
            w.write_all(piece).unwrap();
        }
        assert_eq!(w.len(), payload.len() as u64);
        let info = SnapshotInfo::new(LogIndex(5), Term(1), LogIndex(1), vec![7]);
        let done = s.snapshots.commit_local(info, w).unwrap();
        assert_eq!(done.data_len, payload.len() as u64);
        assert_eq!(done.data_crc, crc32c::crc32c(&payload));
        assert_eq!(max.load(Ordering::Relaxed), 4096);
        assert!(!backend.list().unwrap().iter().any(|n| super::is_local_tmp(n)));

        let mut r = spool.open(&done).unwrap();
        let mut back = Vec::new();
        let mut buf = vec![0u8; 1000];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert_eq!(back, payload);
        assert_eq!(max.load(Ordering::Relaxed), 4096);
        r.rewind(10);
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, &payload[..10]);

        // The receive goes on and completes.
        s.snapshots.receive_chunk(&incoming, 7, b" and the rest").unwrap();
        assert_eq!(s.snapshots.finish_receive().unwrap().data_len, 20);
        drop(s);
        let s = Storage::open(backend.clone(), StorageOptions::default()).unwrap();
        let kept: Vec<LogIndex> = s.snapshots.list().iter().map(|i| i.index).collect();
        assert_eq!(kept, vec![LogIndex(5), LogIndex(9)]);
    }

    #[test]
    fn an_uncommitted_local_snapshot_leaves_nothing_behind() {
        let backend = Arc::new(MemBackend::new());
        let s = Storage::open(backend.clone(), StorageOptions::default()).unwrap();
        let spool = s.snapshots.spool(Arc::default());
        let mut w = spool.create().unwrap();
        w.write_all(b"half an image").unwrap();
        assert!(backend.list().unwrap().iter().any(|n| super::is_local_tmp(n)));
        drop(w);
        assert!(!backend.list().unwrap().iter().any(|n| super::is_local_tmp(n)));
        // Leftovers of a crash are removed at open.
        let mut w = spool.create().unwrap();
        w.write_all(b"x").unwrap();
        std::mem::forget(w);
        let mut w = spool.create().unwrap();
        w.write_all(b"y").unwrap();
        std::mem::forget(w);
        drop(s);
        let s = Storage::open(backend.clone(), StorageOptions::default()).unwrap();
        assert!(!backend.list().unwrap().iter().any(|n| super::is_local_tmp(n)));
        assert!(s.snapshots.latest().is_none());
    }

    /// Commits a local snapshot of `payload` written in two halves, synced by its writer after
    /// `sync_after` halves (0: never), and returns the disk operations the commit itself made
    /// and whether the snapshot reads back whole after a crash that loses every unsynced write.
    fn commit_then_crash(sync_after: usize) -> (u64, bool) {
        // The snapshot store alone: a whole `Storage` prepares log segments on a thread of its
        // own, whose operations would be counted too.
        let backend = Arc::new(MemBackend::new());
        let disk = backend.disk().clone();
        let open = || super::SnapshotStore::open(backend.clone(), Arc::default()).expect("the snapshot store opens");
        let mut store = open();
        let spool = store.spool(Arc::default());
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let mut w = spool.create().unwrap();
        for (k, half) in payload.chunks(payload.len() / 2).enumerate() {
            w.write_all(half).unwrap();
            if k + 1 == sync_after {
                w.sync().unwrap();
            }
        }
        // The commit's own operations: metadata file, renames, directory syncs, and the data
        // sync only if the writer's sync does not cover every byte.
        let before = disk.ops();
        let info = SnapshotInfo::new(LogIndex(5), Term(1), LogIndex(1), vec![7]);
        store.commit_local(info, w).unwrap();
        let ops = disk.ops() - before;
        drop(store);
        disk.restart(CrashMode::LOSE_UNSYNCED);
        let store = open();
        let whole = store.latest().is_some_and(|l| store.read(l).is_ok_and(|d| d == payload));
        (ops, whole)
    }

    #[test]
    fn a_snapshot_synced_by_its_writer_is_not_synced_again_on_the_storage_thread() {
        let (unsynced_ops, whole) = commit_then_crash(0);
        assert!(whole, "a commit syncs what its writer did not");
        let (synced_ops, whole) = commit_then_crash(2);
        assert!(whole, "the writer's sync made the data durable");
        assert_eq!(synced_ops + 1, unsynced_ops, "the commit skips exactly the data sync");
        // Bytes written after the writer's sync are synced by the commit.
        let (late_ops, whole) = commit_then_crash(1);
        assert!(whole, "a write after the writer's sync must be synced by the commit");
        assert_eq!(late_ops, unsynced_ops);
    }
}
