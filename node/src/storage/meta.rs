//! Term and vote, in two alternating metadata files (layout: `docs/log-format.md`).
//!
//! Each save writes the *other* copy with a sequence number one higher and `fdatasync`s it, so
//! a torn write damages at most the copy being written while the previous one stays valid. On
//! open the valid copy with the highest sequence number wins.

use std::sync::Arc;

use dqlite_raft::HardState;

use super::backend::{Backend, BackendFile, BatchFailure, OpenMode};
use super::error::{CorruptReason, Result, StorageError};
use super::format::{self, MetaCopy, META_LEN};
use super::Poison;

/// The two copies' file names.
pub const META_FILES: [&str; 2] = ["metadata-1", "metadata-2"];

/// Durable term, vote and commit index ([`HardState`] of the Raft core).
pub struct MetaStore {
    poison: Arc<Poison>,
    files: Vec<Box<dyn BackendFile>>,
    sequence: u64,
    state: HardState,
}

impl std::fmt::Debug for MetaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStore").field("sequence", &self.sequence).field("state", &self.state).finish()
    }
}

impl MetaStore {
    pub(crate) fn open(backend: Arc<dyn Backend>, poison: Arc<Poison>) -> Result<MetaStore> {
        let mut created = false;
        let mut copies = Vec::with_capacity(2);
        let mut files = Vec::with_capacity(2);
        for name in META_FILES {
            let file = match backend.open(name, OpenMode::Existing) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    created = true;
                    let mut f =
                        backend.open(name, OpenMode::CreateNew).map_err(|e| poison.write_error("create", name, e))?;
                    // Preallocate: later saves overwrite written blocks.
                    f.write_all_sync(&[(0, &[0u8; META_LEN][..])]).map_err(|f| match f {
                        BatchFailure::Write(e) => poison.write_error("write", name, e),
                        BatchFailure::Sync(e) => poison.sync_error(name, e),
                    })?;
                    f
                }
                Err(e) => return Err(StorageError::io("open", name, e)),
            };
            let len = file.len().map_err(|e| StorageError::io("stat", name, e))?;
            let mut buf = vec![0u8; (len as usize).min(META_LEN)];
            file.read_at(0, &mut buf).map_err(|e| StorageError::io("read", name, e))?;
            copies.push(format::decode_meta(&buf));
            files.push(file);
        }
        if created {
            let dir = backend.describe();
            backend.sync_dir().map_err(|e| poison.sync_error(&dir, e))?;
        }
        let mut best: Option<(u64, HardState)> = None;
        let mut damaged = Vec::new();
        for (i, c) in copies.iter().enumerate() {
            match *c {
                MetaCopy::Valid(seq, hs) => {
                    if best.is_none_or(|b| seq > b.0) {
                        best = Some((seq, hs));
                    }
                }
                MetaCopy::Empty => {}
                MetaCopy::Damaged(reason) => damaged.push((i, reason)),
                MetaCopy::Version(version) => {
                    return Err(StorageError::UnsupportedVersion { file: META_FILES[i].to_owned(), version })
                }
            }
        }
        if damaged.len() == 2 {
            return Err(StorageError::Corrupt {
                file: format!("{} and {}", META_FILES[0], META_FILES[1]),
                offset: 0,
                reason: CorruptReason::BothMetadataCopies,
            });
        }
        for (i, reason) in &damaged {
            tracing::warn!(file = META_FILES[*i], %reason, "ignoring a torn metadata copy; using the other");
        }
        let (sequence, state) = best.unwrap_or_default();
        Ok(MetaStore { poison, files, sequence, state })
    }

    /// The last saved hard state (term 0, no vote, commit 0 if never saved).
    pub fn load(&self) -> HardState {
        self.state
    }

    /// Saves the hard state durably (overwrite the older copy, `fdatasync`).
    pub fn save(&mut self, hs: &HardState) -> Result<()> {
        self.poison.check()?;
        let seq = self.sequence + 1;
        let slot = (seq % 2) as usize; // seq 1 -> metadata-2, seq 2 -> metadata-1, ...
        let bytes = format::encode_meta(seq, hs);
        let name = META_FILES[slot];
        self.files[slot].write_all_sync(&[(0, &bytes[..])]).map_err(|f| match f {
            BatchFailure::Write(e) => self.poison.write_error("write", name, e),
            BatchFailure::Sync(e) => self.poison.sync_error(name, e),
        })?;
        self.sequence = seq;
        self.state = *hs;
        Ok(())
    }
}
