//! Durable storage for one node: the Raft log, term and vote, and snapshots.
//!
//! What this module does **not** do: it does not decide what to persist or when (that is the
//! Raft core's `Ready`), does not encode configurations (stored as opaque bytes), and does not
//! retry failed syncs (a failed `fdatasync` poisons the store until it is reopened).
//!
//! ```text
//!  Raft core Ready ──► Storage
//!                       ├─ meta.save(term, vote)      metadata-1 / metadata-2 (alternating)
//!                       ├─ log.append(&entries)       open-<seq>  ─full─►  closed-<seq>-<first>-<last>
//!                       │   (truncates a conflicting      one batch = one write + one fdatasync
//!                       │    suffix first)
//!                       ├─ snapshots.write(meta, r)   snapshot-<index>-<term>{,.meta}; newest two kept
//!                       └─ log.compact(snapshot index) removes segments wholly below it
//!                                │
//!                       Backend (narrow trait): io_uring │ portable pwrite+fdatasync │ memory (faults)
//! ```
//!
//! Every file creation, rename and removal is followed by an `fsync` of the directory. The byte
//! layouts are in `docs/log-format.md`.
//!
//! # Serving the Raft core's `Ready`
//!
//! Every call below is durable when it returns (its data and the directory entries it needs are
//! synced), so "report back" (`RawNode::persisted`) may follow right after the last one:
//!
//! | `Ready` step | call |
//! |---|---|
//! | snapshot chunks from the leader | [`SnapshotStore::receive_chunk`] (offset 0 restarts) |
//! | install the received snapshot | [`SnapshotStore::finish_receive`], then [`LogStore::reset`]`(index + 1)` if the log is not kept, else [`LogStore::compact`]`(index)` |
//! | append entries (the first may overwrite) | [`LogStore::append`]: one batch, one `fdatasync`; a first index `<=` the last index supersedes the conflicting suffix |
//! | hard state | [`MetaStore::save`] |
//! | a snapshot taken locally | [`SnapshotStore::write`], then [`LogStore::compact`]`(index)` |
//!
//! On restart: [`MetaStore::load`], [`SnapshotStore::latest`], and the log's
//! [`LogStore::first_index`]/[`LogStore::last_index`]/[`LogStore::entries`]. The log may still hold
//! entries at or below the latest snapshot's index (compaction removes whole segments only).
//!
//! ```
//! use std::sync::Arc;
//! use dqlite_node::storage::{backend::MemBackend, Storage, StorageOptions};
//! use dqlite_node::raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};
//!
//! let backend = Arc::new(MemBackend::new());
//! let mut s = Storage::open(backend.clone(), StorageOptions::default())?;
//! s.meta.save(&HardState { term: Term(1), vote: Some(NodeId(1)), commit: LogIndex(0) })?;
//! let e = |i| Entry { term: Term(1), index: LogIndex(i), kind: EntryKind::Command, data: vec![i as u8; 10] };
//! s.log.append(&[e(1), e(2), e(3)])?;
//! s.log.append(&[Entry { term: Term(2), ..e(3) }])?; // replaces the conflicting entry 3
//! drop(s);
//!
//! let s = Storage::open(backend, StorageOptions::default())?;
//! assert_eq!(s.meta.load().term, Term(1));
//! assert_eq!(s.log.last_index(), LogIndex(3));
//! assert_eq!(s.log.term(LogIndex(3)), Some(Term(2)));
//! assert_eq!(s.log.entries(LogIndex(1)..LogIndex(3))?.len(), 2);
//! # Ok::<(), dqlite_node::storage::StorageError>(())
//! ```

#![deny(unsafe_code)]

use std::io;
use std::sync::{Arc, Mutex};

pub mod backend;
mod error;
pub mod format;
mod log;
mod meta;
mod snapshot;

pub use dqlite_raft::HardState;
pub use error::{CorruptReason, InvalidRequest, Result, StorageError};
pub use log::{LogOptions, LogStore};
pub use meta::{MetaStore, META_FILES};
pub use snapshot::{SnapshotInfo, SnapshotReader, SnapshotSpool, SnapshotStore, SnapshotWriter, SNAPSHOTS_KEPT};

use backend::{Backend, BackendFile, DirLock, OpenMode};

/// Options for [`Storage::open`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageOptions {
    /// Log tuning.
    pub log: LogOptions,
}

/// Shared "a sync failed" flag: once set, every write of every store fails.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    cause: Mutex<Option<(&'static str, String)>>,
}

impl Poison {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(&'static str, String)>> {
        self.cause.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(Poisoned)` if an earlier failure poisoned the store.
    pub(crate) fn check(&self) -> Result<()> {
        match &*self.lock() {
            Some((op, file)) => Err(StorageError::Poisoned { op, file: file.clone() }),
            None => Ok(()),
        }
    }

    fn set(&self, op: &'static str, file: &str) {
        let mut g = self.lock();
        if g.is_none() {
            tracing::error!(op, file, "storage poisoned");
            *g = Some((op, file.to_owned()));
        }
    }

    /// Maps a failed write: `ENOSPC` is a clean [`StorageError::DiskFull`] (nothing was
    /// acknowledged, the store stays usable); any other failure poisons the store.
    pub(crate) fn write_error(&self, op: &'static str, file: &str, e: io::Error) -> StorageError {
        if error::is_disk_full(&e) {
            tracing::warn!(op, file, "disk full");
            return StorageError::DiskFull { op, file: file.to_owned() };
        }
        self.set(op, file);
        StorageError::io(op, file, e)
    }

    /// Maps a failed `fsync`: always poisons.
    pub(crate) fn sync_error(&self, file: &str, e: io::Error) -> StorageError {
        self.set("fsync", file);
        StorageError::SyncFailed { file: file.to_owned(), source: e }
    }
}

/// Opens the existing file `name` and reads all of it.
fn open_and_read(backend: &dyn Backend, name: &str) -> Result<(Box<dyn BackendFile>, Vec<u8>)> {
    let file = backend.open(name, OpenMode::Existing).map_err(|e| StorageError::io("open", name, e))?;
    let len = file.len().map_err(|e| StorageError::io("stat", name, e))?;
    let mut buf = vec![0u8; len as usize];
    file.read_at(0, &mut buf).map_err(|e| StorageError::io("read", name, e))?;
    Ok((file, buf))
}

/// A node's data directory, locked for exclusive use while this value lives.
#[derive(Debug)]
pub struct Storage {
    /// The Raft log.
    pub log: LogStore,
    /// Term and vote.
    pub meta: MetaStore,
    /// Snapshots.
    pub snapshots: SnapshotStore,
    backend: Arc<dyn Backend>,
    poison: Arc<Poison>,
    _lock: Box<dyn DirLock>,
}

impl Storage {
    /// Locks the directory behind `backend` and recovers all three stores from it.
    ///
    /// Fails with [`StorageError::Locked`] if another store holds the directory, and with
    /// [`StorageError::Corrupt`] (naming the file and offset) on damage that is not a torn,
    /// never-acknowledged tail of the open log segment.
    pub fn open(backend: Arc<dyn Backend>, opts: StorageOptions) -> Result<Storage> {
        let lock = backend.lock().map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                StorageError::Locked { dir: backend.describe() }
            } else {
                StorageError::io("lock", &backend.describe(), e)
            }
        })?;
        let poison = Arc::new(Poison::default());
        let meta = MetaStore::open(Arc::clone(&backend), Arc::clone(&poison))?;
        let snapshots = SnapshotStore::open(Arc::clone(&backend), Arc::clone(&poison))?;
        let log = LogStore::open(Arc::clone(&backend), Arc::clone(&poison), opts.log)?;
        tracing::info!(backend = backend.name(), dir = %backend.describe(), "storage opened");
        Ok(Storage { log, meta, snapshots, backend, poison, _lock: lock })
    }

    /// Opens `dir` with the best backend available ([`backend::auto`]).
    pub fn open_dir(dir: &std::path::Path, opts: StorageOptions) -> Result<Storage> {
        let backend = backend::auto(dir).map_err(|e| StorageError::io("open", &dir.display().to_string(), e))?;
        Storage::open(backend, opts)
    }

    /// The backend in use.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// `Err(Poisoned)` if a failed sync poisoned the store.
    pub fn check_poisoned(&self) -> Result<()> {
        self.poison.check()
    }
}
