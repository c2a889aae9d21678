//! Snapshot files and their metadata (layout: `docs/log-format.md`).
//!
//! Writing a snapshot: data to `snapshot-I-T.tmp`, `fdatasync`; metadata to
//! `snapshot-I-T.meta.tmp`, `fdatasync`; rename the data, directory `fsync`; rename the
//! metadata, directory `fsync`. A snapshot exists once its `.meta` file does. Then every
//! snapshot but the newest two is removed (metadata first). On open, `*.tmp` files and data
//! files without metadata (an interrupted write or removal) are deleted.

use std::io::Read;
use std::sync::Arc;

use dqlite_raft::{LogIndex, Term};

use super::backend::{Backend, BackendFile, BatchFailure, OpenMode};
use super::error::{CorruptReason, Result, StorageError};
use super::format::{self, SegmentHeaderError};
use super::Poison;

/// How many snapshots are kept.
pub const SNAPSHOTS_KEPT: usize = 2;
const CHUNK: usize = 1024 * 1024;

/// What a snapshot is a snapshot of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The last log index it includes.
    pub index: LogIndex,
    /// The term of that entry.
    pub term: Term,
    /// The cluster configuration at `index`, encoded by the Raft core (opaque here).
    pub configuration: Vec<u8>,
    /// Length of the data in bytes (filled in by [`SnapshotStore::write`]).
    pub data_len: u64,
    /// CRC32C of the data (filled in by [`SnapshotStore::write`]).
    pub data_crc: u32,
}

impl SnapshotMeta {
    /// Metadata for a snapshot to be written (`data_len`/`data_crc` are computed on write).
    pub fn new(index: LogIndex, term: Term, configuration: Vec<u8>) -> Self {
        SnapshotMeta { index, term, configuration, data_len: 0, data_crc: 0 }
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

/// Durable snapshots, newest two kept.
pub struct SnapshotStore {
    backend: Arc<dyn Backend>,
    poison: Arc<Poison>,
    /// Complete snapshots, oldest first.
    snapshots: Vec<SnapshotMeta>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore").field("snapshots", &self.snapshots).finish()
    }
}

impl SnapshotStore {
    pub(crate) fn open(backend: Arc<dyn Backend>, poison: Arc<Poison>) -> Result<SnapshotStore> {
        let io = |op, file: &str, e| StorageError::Io { op, file: file.to_owned(), source: e };
        let names = backend.list().map_err(|e| io("list", &backend.describe(), e))?;
        let mut removed = false;
        let mut snapshots = Vec::new();
        for name in &names {
            if name.starts_with("snapshot-") && name.ends_with(".tmp") {
                backend.remove(name).map_err(|e| poison.write_error("remove", name, e))?;
                removed = true;
                continue;
            }
            let Some((index, term, true)) = parse_name(name) else { continue };
            let file = backend.open(name, OpenMode::Existing).map_err(|e| io("open", name, e))?;
            let len = file.len().map_err(|e| io("stat", name, e))?;
            let mut buf = vec![0u8; len as usize];
            file.read_at(0, &mut buf).map_err(|e| io("read", name, e))?;
            let (mi, mt, data_len, data_crc, configuration) =
                format::decode_snapshot_meta(&buf).map_err(|e| match e {
                    SegmentHeaderError::Corrupt(reason) => {
                        StorageError::Corrupt { file: name.clone(), offset: 0, reason }
                    }
                    SegmentHeaderError::Version(version) => {
                        StorageError::UnsupportedVersion { file: name.clone(), version }
                    }
                })?;
            if mi != index || mt != term {
                return Err(StorageError::Corrupt {
                    file: name.clone(),
                    offset: 0,
                    reason: CorruptReason::WrongSegment,
                });
            }
            let dname = data_name(index, term);
            let dlen = match backend.open(&dname, OpenMode::Existing) {
                Ok(f) => f.len().map_err(|e| io("stat", &dname, e))?,
                Err(e) => return Err(io("open", &dname, e)),
            };
            if dlen != data_len {
                return Err(StorageError::Corrupt {
                    file: dname,
                    offset: dlen.min(data_len),
                    reason: CorruptReason::SnapshotData,
                });
            }
            snapshots.push(SnapshotMeta { index, term, configuration, data_len, data_crc });
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
        Ok(SnapshotStore { backend, poison, snapshots })
    }

    /// The newest complete snapshot.
    pub fn latest(&self) -> Option<&SnapshotMeta> {
        self.snapshots.last()
    }

    /// All complete snapshots, oldest first (at most [`SNAPSHOTS_KEPT`]).
    pub fn list(&self) -> &[SnapshotMeta] {
        &self.snapshots
    }

    fn sync_dir(&self) -> Result<()> {
        let dir = self.backend.describe();
        self.backend.sync_dir().map_err(|e| self.poison.sync_error(&dir, e))
    }

    fn write_file(&self, name: &str, mut fill: impl FnMut(&mut dyn BackendFile) -> Result<()>) -> Result<()> {
        let _ = self.backend.remove(name); // a leftover of an earlier failed attempt
        let mut f = self
            .backend
            .open(name, OpenMode::CreateNew)
            .map_err(|e| self.poison.write_error("create", name, e))?;
        fill(f.as_mut())?;
        f.sync().map_err(|e| self.poison.sync_error(name, e))
    }

    /// Writes a snapshot durably from `data` and returns its completed metadata. Older
    /// snapshots beyond the newest [`SNAPSHOTS_KEPT`] are removed.
    pub fn write(&mut self, meta: SnapshotMeta, data: &mut dyn Read) -> Result<SnapshotMeta> {
        self.poison.check()?;
        let dname = data_name(meta.index, meta.term);
        let mname = format!("{dname}.meta");
        let dtmp = format!("{dname}.tmp");
        let mtmp = format!("{mname}.tmp");
        let mut crc = 0u32;
        let mut total = 0u64;
        let poison = Arc::clone(&self.poison);
        self.write_file(&dtmp, |f| {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match data.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StorageError::Io { op: "read snapshot source", file: dtmp.clone(), source: e }),
                };
                f.write_at(total, &buf[..n]).map_err(|e| poison.write_error("write", &dtmp, e))?;
                crc = crc32c::crc32c_append(crc, &buf[..n]);
                total += n as u64;
            }
            Ok(())
        })?;
        let bytes = format::encode_snapshot_meta(meta.index, meta.term, total, crc, &meta.configuration);
        self.write_file(&mtmp, |f| {
            f.write_all_sync(&[(0, &bytes)]).map_err(|fail| match fail {
                BatchFailure::Write(e) => poison.write_error("write", &mtmp, e),
                BatchFailure::Sync(e) => poison.sync_error(&mtmp, e),
            })
        })?;
        self.backend.rename(&dtmp, &dname).map_err(|e| self.poison.write_error("rename", &dtmp, e))?;
        self.sync_dir()?;
        self.backend.rename(&mtmp, &mname).map_err(|e| self.poison.write_error("rename", &mtmp, e))?;
        self.sync_dir()?;
        let done = SnapshotMeta { data_len: total, data_crc: crc, ..meta };
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
        tracing::debug!(index = %done.index, term = %done.term, bytes = total, "snapshot written");
        Ok(done)
    }

    /// Reads a whole snapshot's data, checking it against its metadata.
    pub fn read(&self, meta: &SnapshotMeta) -> Result<Vec<u8>> {
        let name = data_name(meta.index, meta.term);
        let f = self
            .backend
            .open(&name, OpenMode::Existing)
            .map_err(|e| StorageError::Io { op: "open", file: name.clone(), source: e })?;
        let mut buf = vec![0u8; meta.data_len as usize];
        f.read_at(0, &mut buf).map_err(|e| StorageError::Io { op: "read", file: name.clone(), source: e })?;
        if crc32c::crc32c(&buf) != meta.data_crc {
            return Err(StorageError::Corrupt { file: name, offset: 0, reason: CorruptReason::SnapshotData });
        }
        Ok(buf)
    }

    /// Reads up to `buf.len()` bytes of a snapshot's data at `offset` (for streaming it to a
    /// follower in chunks; the receiver checks the whole CRC). Returns the count read.
    pub fn read_chunk(&self, meta: &SnapshotMeta, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let name = data_name(meta.index, meta.term);
        let f = self
            .backend
            .open(&name, OpenMode::Existing)
            .map_err(|e| StorageError::Io { op: "open", file: name.clone(), source: e })?;
        let n = (meta.data_len.saturating_sub(offset) as usize).min(buf.len());
        f.read_at(offset, &mut buf[..n]).map_err(|e| StorageError::Io { op: "read", file: name, source: e })?;
        Ok(n)
    }
}
