//! Byte layouts of format version 1 (documented in `docs/log-format.md`). Every integer is
//! little-endian and fixed-width; every checksum is CRC32C (Castagnoli).
//!
//! Decoders never panic: they return `None`/`Err` on any input.

use dqlite_raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Term};

use super::error::CorruptReason;

/// The format version this build writes into metadata, snapshot metadata and pre-zeroed log
/// segments (and reads).
pub const FORMAT_VERSION: u32 = 1;
/// Segment header version of a pre-zeroed segment: every byte after the last batch is zero.
pub const SEGMENT_VERSION_ZEROED: u32 = 1;
/// Segment header version of a *recycled* segment (a freed segment file reused under a new
/// sequence): after the last batch come [`END_MARKER_LEN`] zero bytes, then possibly stale
/// bytes of the file's earlier use. Readers of version 1 refuse it, so they never misread it.
pub const SEGMENT_VERSION_RECYCLED: u32 = 2;
/// Zero bytes that follow the last batch of a recycled segment (the end-of-data marker): a
/// batch header's size, so "a batch header of zeros" ends the segment in both versions.
pub const END_MARKER_LEN: usize = 40;

/// Segment header magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DQRSLOG\0";
/// Size of the segment header; the first batch starts here.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Batch header magic.
pub const BATCH_MAGIC: [u8; 4] = *b"DQRB";
/// Size of a batch header.
pub const BATCH_HEADER_LEN: usize = 40;
/// Size of one entry header inside a batch.
pub const ENTRY_HEADER_LEN: usize = 24;
/// Batch flag: the log restarts at `first_index`; everything before is discarded.
pub const FLAG_RESET: u32 = 1;
/// Metadata file magic.
pub const META_MAGIC: [u8; 8] = *b"DQRSMETA";
/// Size of a metadata file.
pub const META_LEN: usize = 64;
/// Snapshot metadata magic.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"DQRSSNAP";
/// Fixed part of a snapshot metadata file (before the configuration bytes).
pub const SNAPSHOT_META_FIXED_LEN: usize = 56;

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// Rounds `n` up to a multiple of 8.
pub const fn pad8(n: usize) -> usize {
    (n + 7) & !7
}

// ---------------------------------------------------------------------------------------------
// Segment header
// ---------------------------------------------------------------------------------------------

/// Encodes a segment header for segment `seq` (version 1: a pre-zeroed segment).
pub fn encode_segment_header(seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    encode_segment_header_version(seq, SEGMENT_VERSION_ZEROED)
}

/// Encodes a segment header for segment `seq` with header `version`
/// ([`SEGMENT_VERSION_ZEROED`] or [`SEGMENT_VERSION_RECYCLED`]).
pub fn encode_segment_header_version(seq: u64, version: u32) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Damaged (bad magic, checksum or length).
    Corrupt(CorruptReason),
    /// A valid header of another format version.
    Version(u32),
}

/// Decodes a segment header of either version, returning the segment sequence.
pub fn decode_segment_header(b: &[u8]) -> Result<u64, SegmentHeaderError> {
    decode_segment_header_version(b).map(|(seq, _)| seq)
}

/// Decodes a segment header, returning the segment sequence and the header version
/// ([`SEGMENT_VERSION_ZEROED`] or [`SEGMENT_VERSION_RECYCLED`]).
pub fn decode_segment_header_version(b: &[u8]) -> Result<(u64, u32), SegmentHeaderError> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err(SegmentHeaderError::Corrupt(CorruptReason::BadLength));
    }
    if b[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Corrupt(CorruptReason::BadMagic));
    }
    if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
        return Err(SegmentHeaderError::Corrupt(CorruptReason::BadHeaderChecksum));
    }
    let version = u32_at(b, 8);
    if version != SEGMENT_VERSION_ZEROED && version != SEGMENT_VERSION_RECYCLED {
        return Err(SegmentHeaderError::Version(version));
    }
    if u32_at(b, 12) as usize != SEGMENT_HEADER_LEN {
        return Err(SegmentHeaderError::Corrupt(CorruptReason::BadLength));
    }
    Ok((u64_at(b, 16), version))
}

// ---------------------------------------------------------------------------------------------
// Batches
// ---------------------------------------------------------------------------------------------

/// The encoded size of a batch holding `entries`.
pub fn batch_len(entries: &[Entry]) -> usize {
    let data: usize = entries.iter().map(|e| e.data.len()).sum();
    pad8(BATCH_HEADER_LEN + ENTRY_HEADER_LEN * entries.len() + data)
}

/// Appends the encoding of one batch to `out`. `entries` may be empty (a truncation or reset
/// record). The caller checks that the length fits in a `u32`.
pub fn encode_batch(out: &mut Vec<u8>, seq: u64, first_index: LogIndex, flags: u32, entries: &[Entry]) {
    let start = out.len();
    let len = batch_len(entries);
    out.reserve(len);
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&[0u8; 4]); // crc, filled below
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&first_index.0.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for e in entries {
        out.extend_from_slice(&e.term.0.to_le_bytes());
        out.extend_from_slice(&e.index.0.to_le_bytes());
        out.push(e.kind as u8);
        out.extend_from_slice(&[0u8; 3]);
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
    }
    for e in entries {
        out.extend_from_slice(&e.data);
    }
    out.resize(start + len, 0);
    let crc = crc32c::crc32c(&out[start + 8..start + len]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One entry's header as decoded from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// Its term.
    pub term: Term,
    /// Its index.
    pub index: LogIndex,
    /// Its kind.
    pub kind: EntryKind,
    /// Byte offset of its payload inside the batch.
    pub data_offset: u32,
    /// Payload length.
    pub data_len: u32,
}

/// A verified batch header and its entry headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchInfo {
    /// Total encoded length (a multiple of 8).
    pub len: u32,
    /// Index of the first entry, or the truncation/reset point of an empty batch.
    pub first_index: LogIndex,
    /// Flags (`FLAG_RESET`).
    pub flags: u32,
    /// Its entries.
    pub entries: Vec<EntryMeta>,
}

/// Reads the length field of a batch header if the magic matches and the length is sane for
/// `available` bytes; used to skip through a segment and to look for valid batches after damage.
pub fn peek_batch_len(b: &[u8], available: usize) -> Option<usize> {
    if b.len() < BATCH_HEADER_LEN || b[0..4] != BATCH_MAGIC {
        return None;
    }
    let len = u32_at(b, 8) as usize;
    if len < BATCH_HEADER_LEN || len % 8 != 0 || len > available {
        return None;
    }
    Some(len)
}

/// Verifies and decodes the batch at the start of `b` (which may extend past it), for segment
/// `seq`. On failure, returns what is wrong.
pub fn decode_batch(b: &[u8], seq: u64) -> Result<BatchInfo, CorruptReason> {
    if b.len() < BATCH_HEADER_LEN {
        return Err(CorruptReason::BadLength);
    }
    if b[0..4] != BATCH_MAGIC {
        return Err(CorruptReason::BadMagic);
    }
    let len = peek_batch_len(b, b.len()).ok_or(CorruptReason::BadLength)?;
    let body = &b[..len];
    if crc32c::crc32c(&body[8..]) != u32_at(body, 4) {
        return Err(CorruptReason::BadChecksum);
    }
    if u64_at(body, 24) != seq {
        return Err(CorruptReason::WrongSegment);
    }
    let count = u32_at(body, 12) as usize;
    let first_index = LogIndex(u64_at(body, 16));
    let flags = u32_at(body, 32);
    let headers_end = count
        .checked_mul(ENTRY_HEADER_LEN)
        .and_then(|n| n.checked_add(BATCH_HEADER_LEN))
        .ok_or(CorruptReason::BadLength)?;
    if headers_end > len {
        return Err(CorruptReason::BadLength);
    }
    let mut entries = Vec::with_capacity(count);
    let mut data_off = headers_end;
    for i in 0..count {
        let h = &body[BATCH_HEADER_LEN + i * ENTRY_HEADER_LEN..];
        let term = Term(u64_at(h, 0));
        let index = LogIndex(u64_at(h, 8));
        let kind = EntryKind::from_u8(h[16]).ok_or(CorruptReason::UnknownEntryKind)?;
        let size = u32_at(h, 20) as usize;
        if index.0 != first_index.0.wrapping_add(i as u64) {
            return Err(CorruptReason::IndexGap);
        }
        if data_off + size > len {
            return Err(CorruptReason::BadLength);
        }
        entries.push(EntryMeta { term, index, kind, data_offset: data_off as u32, data_len: size as u32 });
        data_off += size;
    }
    if count > 0 && first_index.0 == 0 {
        return Err(CorruptReason::IndexGap);
    }
    Ok(BatchInfo { len: len as u32, first_index, flags, entries })
}

// ---------------------------------------------------------------------------------------------
// Metadata (term and vote)
// ---------------------------------------------------------------------------------------------

/// Encodes one metadata copy.
pub fn encode_meta(sequence: u64, hs: &HardState) -> [u8; META_LEN] {
    let mut b = [0u8; META_LEN];
    b[0..8].copy_from_slice(&META_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&sequence.to_le_bytes());
    b[24..32].copy_from_slice(&hs.term.0.to_le_bytes());
    b[32..40].copy_from_slice(&hs.vote.map_or(0, |v| v.0).to_le_bytes());
    b[40..48].copy_from_slice(&hs.commit.0.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A decoded metadata copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaCopy {
    /// Never written (all zeros or empty).
    Empty,
    /// A valid copy: its sequence number and contents.
    Valid(u64, HardState),
    /// Damaged.
    Damaged(CorruptReason),
    /// Written by another format version.
    Version(u32),
}

/// Decodes one metadata copy.
pub fn decode_meta(b: &[u8]) -> MetaCopy {
    if b.iter().all(|&x| x == 0) {
        return MetaCopy::Empty;
    }
    if b.len() < META_LEN {
        return MetaCopy::Damaged(CorruptReason::BadLength);
    }
    if b[0..8] != META_MAGIC {
        return MetaCopy::Damaged(CorruptReason::BadMagic);
    }
    if crc32c::crc32c(&b[0..60]) != u32_at(b, 60) {
        return MetaCopy::Damaged(CorruptReason::BadHeaderChecksum);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return MetaCopy::Version(version);
    }
    let vote = u64_at(b, 32);
    MetaCopy::Valid(
        u64_at(b, 16),
        HardState {
            term: Term(u64_at(b, 24)),
            vote: (vote != 0).then_some(NodeId(vote)),
            commit: LogIndex(u64_at(b, 40)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Snapshot metadata
// ---------------------------------------------------------------------------------------------

/// The fields of a snapshot metadata file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMetaFields {
    /// Last included index.
    pub index: LogIndex,
    /// Its term.
    pub term: Term,
    /// Index of the entry that carried the configuration (0 if none).
    pub configuration_index: LogIndex,
    /// Data length in bytes.
    pub data_len: u64,
    /// CRC32C of the data.
    pub data_crc: u32,
    /// The configuration, opaque.
    pub configuration: Vec<u8>,
}

/// Encodes a snapshot metadata file.
pub fn encode_snapshot_meta(f: &SnapshotMetaFields) -> Vec<u8> {
    let (index, term, data_len, data_crc, configuration) = (f.index, f.term, f.data_len, f.data_crc, &f.configuration);
    let mut b = Vec::with_capacity(SNAPSHOT_META_FIXED_LEN + configuration.len() + 4);
    b.extend_from_slice(&SNAPSHOT_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    b.extend_from_slice(&index.0.to_le_bytes());
    b.extend_from_slice(&term.0.to_le_bytes());
    b.extend_from_slice(&f.configuration_index.0.to_le_bytes());
    b.extend_from_slice(&data_len.to_le_bytes());
    b.extend_from_slice(&data_crc.to_le_bytes());
    b.extend_from_slice(&(configuration.len() as u32).to_le_bytes());
    b.extend_from_slice(configuration);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a snapshot metadata file.
pub fn decode_snapshot_meta(b: &[u8]) -> Result<SnapshotMetaFields, SegmentHeaderError> {
    let bad = |r| Err(SegmentHeaderError::Corrupt(r));
    if b.len() < SNAPSHOT_META_FIXED_LEN + 4 {
        return bad(CorruptReason::BadLength);
    }
    if b[0..8] != SNAPSHOT_MAGIC {
        return bad(CorruptReason::BadMagic);
    }
    let conf_len = u32_at(b, 52) as usize;
    let Some(total) = SNAPSHOT_META_FIXED_LEN.checked_add(conf_len).and_then(|n| n.checked_add(4)) else {
        return bad(CorruptReason::BadLength);
    };
    if total != b.len() {
        return bad(CorruptReason::BadLength);
    }
    let body = total - 4;
    if crc32c::crc32c(&b[..body]) != u32_at(b, body) {
        return bad(CorruptReason::BadHeaderChecksum);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderError::Version(version));
    }
    Ok(SnapshotMetaFields {
        index: LogIndex(u64_at(b, 16)),
        term: Term(u64_at(b, 24)),
        configuration_index: LogIndex(u64_at(b, 32)),
        data_len: u64_at(b, 40),
        data_crc: u32_at(b, 48),
        configuration: b[SNAPSHOT_META_FIXED_LEN..body].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64, n: usize) -> Entry {
        Entry { term: Term(3), index: LogIndex(i), kind: EntryKind::Command, data: vec![i as u8; n] }
    }

    #[test]
    fn batch_round_trip_and_every_bit_flip_is_caught() {
        let entries = vec![entry(5, 3), entry(6, 0), entry(7, 10)];
        let mut b = Vec::new();
        encode_batch(&mut b, 9, LogIndex(5), 0, &entries);
        assert_eq!(b.len(), batch_len(&entries));
        let info = decode_batch(&b, 9).expect("valid batch");
        assert_eq!(info.entries.len(), 3);
        assert_eq!(info.entries[2].index, LogIndex(7));
        let e = info.entries[2];
        assert_eq!(&b[e.data_offset as usize..][..e.data_len as usize], &[7u8; 10][..]);
        assert_eq!(decode_batch(&b, 8), Err(CorruptReason::WrongSegment));
        for byte in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                assert!(decode_batch(&c, 9).is_err(), "flip at {byte}:{bit} not caught");
            }
        }
    }

    #[test]
    fn decoders_never_panic_on_short_or_garbage_input() {
        for n in 0..80 {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let _ = decode_batch(&junk, 1);
            let _ = decode_segment_header(&junk);
            let _ = decode_meta(&junk);
            let _ = decode_snapshot_meta(&junk);
        }
        let mut hdr = [0u8; BATCH_HEADER_LEN];
        hdr[0..4].copy_from_slice(&BATCH_MAGIC);
        hdr[8..12].copy_from_slice(&(BATCH_HEADER_LEN as u32).to_le_bytes());
        hdr[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&hdr, 0).is_err());
    }

    #[test]
    fn meta_and_snapshot_meta_round_trip() {
        let hs = HardState { term: Term(4), vote: Some(NodeId(2)), commit: LogIndex(9) };
        let m = encode_meta(7, &hs);
        assert_eq!(decode_meta(&m), MetaCopy::Valid(7, hs));
        assert_eq!(decode_meta(&[0u8; META_LEN]), MetaCopy::Empty);
        let f = SnapshotMetaFields {
            index: LogIndex(10),
            term: Term(2),
            configuration_index: LogIndex(4),
            data_len: 99,
            data_crc: 1234,
            configuration: b"conf".to_vec(),
        };
        let s = encode_snapshot_meta(&f);
        assert_eq!(decode_snapshot_meta(&s).expect("valid"), f);
        let h = encode_segment_header(42);
        assert_eq!(decode_segment_header(&h), Ok(42));
    }
}
