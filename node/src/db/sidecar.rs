//! The per-database sidecar file `NAME-dqlite` (format in `docs/data-directory.md`): which WAL
//! generation is current, where it starts in the log, and how far the database file is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use dqlite_raft::LogIndex;

const MAGIC: &[u8; 4] = b"DQSC";
const VERSION: u32 = 1;
const BYTES: usize = 52;

/// The sidecar's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sidecar {
    /// The salts of the current WAL generation (bytes 16..24 of its header), or zero.
    pub salts: [u8; 8],
    /// The salts of the generation before it (a crash between this file and the new WAL header
    /// leaves that generation's WAL behind, wholly checkpointed).
    pub prev_salts: [u8; 8],
    /// The k-th commit of this WAL generation is the k-th frames entry of this database at or
    /// after this index.
    pub gen_first: LogIndex,
    /// Every entry of this database at or below this index is durable in the database file.
    pub ckpt_index: LogIndex,
    /// How many commits of the current generation that covers.
    pub ckpt_commits: u64,
}

/// Why a sidecar could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Damaged content.
    #[error("{path}: damaged sidecar ({reason})")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SidecarError + '_ {
    move |source| SidecarError::Io { path: path.to_path_buf(), source }
}

impl Sidecar {
    fn encode(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..4].copy_from_slice(MAGIC);
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.salts);
        b[16..24].copy_from_slice(&self.gen_first.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.ckpt_index.0.to_le_bytes());
        b[32..40].copy_from_slice(&self.ckpt_commits.to_le_bytes());
        b[40..48].copy_from_slice(&self.prev_salts);
        let crc = crc32c::crc32c(&b[..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads `path`; `Ok(None)` if it does not exist.
    pub fn read(path: &Path) -> Result<Option<Sidecar>, SidecarError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b).map_err(io(path))?;
        let damaged = |reason| SidecarError::Damaged { path: path.to_path_buf(), reason };
        if b.len() != BYTES {
            return Err(damaged("wrong length"));
        }
        if &b[0..4] != MAGIC {
            return Err(damaged("bad magic"));
        }
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let crc = u32::from_le_bytes([b[48], b[49], b[50], b[51]]);
        if crc != crc32c::crc32c(&b[..48]) {
            return Err(damaged("checksum mismatch"));
        }
        if u32::from_le_bytes([b[4], b[5], b[6], b[7]]) != VERSION {
            return Err(damaged("unsupported version"));
        }
        let mut salts = [0u8; 8];
        salts.copy_from_slice(&b[8..16]);
        let mut prev_salts = [0u8; 8];
        prev_salts.copy_from_slice(&b[40..48]);
        Ok(Some(Sidecar {
            salts,
            prev_salts,
            gen_first: LogIndex(u64_at(16)),
            ckpt_index: LogIndex(u64_at(24)),
            ckpt_commits: u64_at(32),
        }))
    }

    /// Writes `path` durably (temporary file, fsync, rename, fsync of the directory).
    pub fn write(&self, path: &Path) -> Result<(), SidecarError> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
            f.write_all(&self.encode()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, path).map_err(io(path))?;
        sync_dir(path)
    }
}

/// Fsyncs the directory holding `path`.
pub fn sync_dir(path: &Path) -> Result<(), SidecarError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-dqlite");
        assert_eq!(Sidecar::read(&p).unwrap(), None);
        let s = Sidecar {
            salts: [1, 2, 3, 4, 5, 6, 7, 8],
            prev_salts: [9; 8],
            gen_first: LogIndex(5),
            ckpt_index: LogIndex(4),
            ckpt_commits: 2,
        };
        s.write(&p).unwrap();
        assert_eq!(Sidecar::read(&p).unwrap(), Some(s));
        let mut b = fs::read(&p).unwrap();
        b[20] ^= 1;
        fs::write(&p, &b).unwrap();
        assert!(matches!(Sidecar::read(&p), Err(SidecarError::Damaged { .. })));
    }
}
