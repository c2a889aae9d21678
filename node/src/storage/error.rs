//! Storage errors: one `#[non_exhaustive]` enum whose reasons are variants.

use std::io;

use dqlite_raft::LogIndex;

/// Why a file failed validation. Part of [`StorageError::Corrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptReason {
    /// The file does not start with the expected magic bytes.
    BadMagic,
    /// A header's own checksum does not match.
    BadHeaderChecksum,
    /// A batch's CRC32C (over its header and data) does not match.
    BadChecksum,
    /// A length field points outside the file or is too small.
    BadLength,
    /// A batch belongs to another segment (its segment sequence does not match the file's).
    WrongSegment,
    /// An entry's index does not follow its predecessor, or a batch leaves a gap.
    IndexGap,
    /// An entry kind byte this version does not know.
    UnknownEntryKind,
    /// A damaged batch is followed by valid batches: the damage is not a torn tail.
    DamageBeforeValidData,
    /// Non-zero bytes after the last batch of a closed segment.
    TrailingGarbage,
    /// Snapshot data does not match the length or checksum recorded in its metadata.
    SnapshotData,
    /// Both metadata files are damaged.
    BothMetadataCopies,
    /// A closed segment's batches do not reach the lowest/highest entry index its name records
    /// (a batch at its end was lost or zeroed in place).
    MissingRecordedEntries,
}

impl std::fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            CorruptReason::BadMagic => "bad magic bytes",
            CorruptReason::BadHeaderChecksum => "header checksum mismatch",
            CorruptReason::BadChecksum => "batch checksum (CRC32C) mismatch",
            CorruptReason::BadLength => "length field out of range",
            CorruptReason::WrongSegment => "batch belongs to another segment",
            CorruptReason::IndexGap => "log index gap",
            CorruptReason::UnknownEntryKind => "unknown entry kind",
            CorruptReason::DamageBeforeValidData => "damaged batch followed by valid data (not a torn tail)",
            CorruptReason::TrailingGarbage => "non-zero bytes after the last batch of a closed segment",
            CorruptReason::SnapshotData => "snapshot data does not match its metadata",
            CorruptReason::BothMetadataCopies => "both metadata copies are damaged",
            CorruptReason::MissingRecordedEntries => {
                "closed segment holds fewer entries than its name records (a batch was lost)"
            }
        };
        f.write_str(s)
    }
}

/// Why an append or truncation was refused before touching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidRequest {
    /// `append` was given no entries.
    EmptyAppend,
    /// Entries in one `append` do not have consecutive indexes.
    NotConsecutive,
    /// The first index would leave a gap after the last index.
    Gap,
    /// The index is below the first index still in the log.
    BelowFirstIndex,
    /// Index 0 is never a log entry.
    ZeroIndex,
    /// One batch would exceed the maximum batch size (4 GiB).
    BatchTooLarge,
    /// A snapshot chunk that does not continue the snapshot being received.
    SnapshotChunkOutOfOrder,
}

impl std::fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            InvalidRequest::EmptyAppend => "append of zero entries",
            InvalidRequest::NotConsecutive => "entries are not consecutive",
            InvalidRequest::Gap => "first index leaves a gap after the last index",
            InvalidRequest::BelowFirstIndex => "index is below the first index in the log",
            InvalidRequest::ZeroIndex => "index 0 is not a log entry",
            InvalidRequest::BatchTooLarge => "batch exceeds the maximum batch size",
            InvalidRequest::SnapshotChunkOutOfOrder => "snapshot chunk out of order",
        };
        f.write_str(s)
    }
}

/// An error from the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// An I/O call failed.
    #[error("{op} {file}: {source}")]
    Io {
        /// The operation (`"write"`, `"read"`, `"rename"`, ...).
        op: &'static str,
        /// The file (or directory) it was applied to.
        file: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file system is full (`ENOSPC`). Nothing was acknowledged; the files are consistent and
    /// the store can be used again once space is freed.
    #[error("disk full while {op} {file}")]
    DiskFull {
        /// The operation.
        op: &'static str,
        /// The file.
        file: String,
    },
    /// An `fdatasync`/`fsync` failed. The store is now poisoned: the kernel may have dropped the
    /// dirty pages, so retrying could falsely report data as durable. Restart to recover.
    #[error("fsync of {file} failed, storage is poisoned until restart: {source}")]
    SyncFailed {
        /// The file (or directory) whose sync failed.
        file: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A previous failure (failed fsync or failed write) poisoned the store; every write fails
    /// until the store is reopened.
    #[error("storage poisoned by an earlier failure ({op} {file}); reopen to recover")]
    Poisoned {
        /// The operation that poisoned the store.
        op: &'static str,
        /// The file it was applied to.
        file: String,
    },
    /// A file is damaged at a known place.
    #[error("corrupt {file} at offset {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: String,
        /// Byte offset of the damage (start of the damaged header or batch).
        offset: u64,
        /// What is wrong.
        reason: CorruptReason,
    },
    /// A file was written by a format version this build cannot read.
    #[error("{file}: unsupported format version {version}")]
    UnsupportedVersion {
        /// The file.
        file: String,
        /// The version found.
        version: u32,
    },
    /// Another process or store holds the data directory's lock file.
    #[error("data directory {dir} is locked by another store")]
    Locked {
        /// The directory.
        dir: String,
    },
    /// An entry index outside `[first_index, last_index]`.
    #[error("index {index} out of range [{first}, {last}]")]
    OutOfRange {
        /// The requested index.
        index: LogIndex,
        /// The first index in the log.
        first: LogIndex,
        /// The last index in the log.
        last: LogIndex,
    },
    /// The request was refused before any I/O.
    #[error("invalid request: {0}")]
    Invalid(InvalidRequest),
}

impl StorageError {
    /// An [`StorageError::Io`] for `op` on `file`.
    pub(crate) fn io(op: &'static str, file: &str, source: io::Error) -> Self {
        StorageError::Io { op, file: file.to_owned(), source }
    }
}

/// Result alias for storage calls.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// `true` if the OS error means "no space left on device" (or quota exceeded).
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::StorageFull || e.kind() == io::ErrorKind::QuotaExceeded {
        return true;
    }
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}
