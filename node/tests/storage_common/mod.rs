//! Shared helpers for the storage test suites: backend fixtures, entries, a seeded PRNG.
#![allow(dead_code)]

use std::sync::Arc;

use dqlite_node::raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};
use dqlite_node::storage::backend::{Backend, MemDisk, PortableBackend};
use dqlite_node::storage::{LogOptions, Storage, StorageOptions};

/// A data directory that can be reopened with a fresh backend instance (a "restart").
pub trait Dir {
    fn backend(&self) -> Arc<dyn Backend>;
    fn kind(&self) -> &'static str;
}

pub struct PortableDir(pub tempfile::TempDir);
impl Dir for PortableDir {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(PortableBackend::new(self.0.path()).expect("portable backend"))
    }
    fn kind(&self) -> &'static str {
        "portable"
    }
}

#[cfg(target_os = "linux")]
pub struct UringDir(pub tempfile::TempDir);
#[cfg(target_os = "linux")]
impl Dir for UringDir {
    fn backend(&self) -> Arc<dyn Backend> {
        // On Linux io_uring must work: fail loudly instead of silently testing something else.
        match dqlite_node::storage::backend::UringBackend::new(self.0.path()) {
            Ok(b) => Arc::new(b),
            Err(e) => {
                panic!("io_uring backend unavailable on Linux ({e}); the io_uring conformance run cannot be skipped")
            }
        }
    }
    fn kind(&self) -> &'static str {
        "io_uring"
    }
}

/// io_uring without `O_DIRECT` (the path taken where the file system refuses it).
#[cfg(target_os = "linux")]
pub struct UringBufferedDir(pub tempfile::TempDir);
#[cfg(target_os = "linux")]
impl Dir for UringBufferedDir {
    fn backend(&self) -> Arc<dyn Backend> {
        match dqlite_node::storage::backend::UringBackend::with_direct_io(self.0.path(), false) {
            Ok(b) => Arc::new(b),
            Err(e) => panic!("io_uring backend unavailable on Linux ({e})"),
        }
    }
    fn kind(&self) -> &'static str {
        "io_uring (buffered)"
    }
}

pub struct MemDir(pub MemDisk);
impl Dir for MemDir {
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.backend())
    }
    fn kind(&self) -> &'static str {
        "memory"
    }
}

/// A temporary directory on the same file system as the repository's target dir (not tmpfs).
pub fn tempdir() -> tempfile::TempDir {
    let base = option_env!("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from);
    match base {
        Some(b) => tempfile::Builder::new().prefix("storage-").tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

pub fn small_segments() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_size_bytes: 16 * 1024, ..LogOptions::default() } }
}

/// Small segments, preallocated inline: every file operation happens in a fixed order.
pub fn small_segments_deterministic() -> StorageOptions {
    StorageOptions { log: LogOptions { segment_size_bytes: 16 * 1024, background_preallocation: false } }
}

pub fn open(dir: &dyn Dir, opts: StorageOptions) -> Storage {
    match Storage::open(dir.backend(), opts) {
        Ok(s) => s,
        Err(e) => panic!("open {} storage: {e}", dir.kind()),
    }
}

/// A deterministic entry: payload derived from (term, index, len).
pub fn entry(term: u64, index: u64, len: usize) -> Entry {
    let data = (0..len).map(|i| (index as usize * 31 + term as usize * 7 + i) as u8).collect();
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Command, data }
}

pub fn entries(term: u64, from: u64, to_incl: u64, len: usize) -> Vec<Entry> {
    (from..=to_incl).map(|i| entry(term, i, len)).collect()
}

/// Reads the whole log.
pub fn read_all(s: &Storage) -> Vec<Entry> {
    s.log.read_all().expect("read whole log")
}

/// SplitMix64: small, seedable, good enough for test inputs.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The seed from `var` if set, else one derived from the clock. Always printed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = match std::env::var(var) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{var} must be a u64, got {v:?}")),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        }
    };
    eprintln!("seed: {seed} (replay with {var}={seed})");
    seed
}

/// A hard state with a commit index derived from the term (so it is checked too).
pub fn hs(term: Term, vote: Option<NodeId>) -> HardState {
    HardState { term, vote, commit: LogIndex(term.0 * 3) }
}
