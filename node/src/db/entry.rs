//! The replicated entry format (version 1), documented in `docs/entry-format.md`.
//!
//! Decoding never panics and borrows page images from the entry's bytes.

use dqlite_raft::Term;

const MAGIC: &[u8; 4] = b"DQLE";
/// The format version written by this build.
pub const VERSION: u8 = 1;
const KIND_FRAMES: u8 = 1;
const KIND_BARRIER: u8 = 2;
/// The longest database name.
pub const NAME_MAX_BYTES: usize = 200;
const HEADER_BYTES: usize = 16;
const CRC_BYTES: usize = 4;

/// Why an entry did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Shorter than its fixed parts.
    #[error("entry truncated ({0} bytes)")]
    Truncated(usize),
    /// Wrong magic bytes.
    #[error("not a dqlite-rs entry (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported entry version {0}")]
    UnsupportedVersion(u8),
    /// An unknown kind byte.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// The trailing checksum does not match.
    #[error("entry checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// In the entry.
        stored: u32,
        /// Over its bytes.
        computed: u32,
    },
    /// A field is out of range or the lengths do not add up.
    #[error("malformed entry: {0}")]
    Malformed(&'static str),
}

/// A decoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// One committed transaction's pages.
    Frames(FramesEntry<'a>),
    /// A leader's readiness barrier: applied in the term it names, it tells that leader that
    /// every earlier entry is applied locally.
    Barrier {
        /// The proposer's term.
        term: Term,
    },
}

/// The pages of one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramesEntry<'a> {
    /// The term in which the proposer was ready (its barrier applied); an entry appended in
    /// another term is stale and skipped by every node.
    pub guard: Term,
    /// The database's name.
    pub db: &'a str,
    /// Page size in bytes.
    pub page_size: u32,
    /// Database size in pages after the commit.
    pub db_size: u32,
    pgnos: &'a [u8],
    pages: &'a [u8],
}

impl<'a> FramesEntry<'a> {
    /// The number of pages.
    pub fn page_count(&self) -> usize {
        self.pgnos.len() / 4
    }

    /// Page numbers and images, ascending.
    pub fn pages(&self) -> impl Iterator<Item = (u32, &'a [u8])> + '_ {
        let size = self.page_size as usize;
        self.pgnos
            .chunks_exact(4)
            .zip(self.pages.chunks_exact(size))
            .map(|(n, p)| (u32::from_le_bytes([n[0], n[1], n[2], n[3]]), p))
    }

    /// The digest that identifies these frames (see [`frames_digest`]).
    pub fn digest(&self) -> u32 {
        frames_digest(self.db_size, self.pages())
    }
}

/// CRC32C over the database size and every (page number, image) in ascending page order: the
/// same value for an entry and for the WAL commit that holds its pages (restart verification).
pub fn frames_digest<'p>(db_size: u32, pages: impl Iterator<Item = (u32, &'p [u8])>) -> u32 {
    let mut crc = crc32c::crc32c(&db_size.to_le_bytes());
    for (pgno, page) in pages {
        crc = crc32c::crc32c_append(crc, &pgno.to_le_bytes());
        crc = crc32c::crc32c_append(crc, page);
    }
    crc
}

fn header(kind: u8, term: Term, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&term.0.to_le_bytes());
    out
}

fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Encodes a frames entry. `pages` must be ascending by page number, each `page_size` long.
pub fn encode_frames(guard: Term, db: &str, page_size: u32, db_size: u32, pages: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let cap = HEADER_BYTES + 2 + db.len() + 12 + pages.len() * (4 + page_size as usize) + CRC_BYTES;
    let mut out = header(KIND_FRAMES, guard, cap);
    out.extend_from_slice(&(db.len() as u16).to_le_bytes());
    out.extend_from_slice(db.as_bytes());
    out.extend_from_slice(&page_size.to_le_bytes());
    out.extend_from_slice(&db_size.to_le_bytes());
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for (pgno, _) in pages {
        out.extend_from_slice(&pgno.to_le_bytes());
    }
    for (_, page) in pages {
        out.extend_from_slice(page);
    }
    seal(out)
}

/// Encodes a barrier entry.
pub fn encode_barrier(term: Term) -> Vec<u8> {
    seal(header(KIND_BARRIER, term, HEADER_BYTES + CRC_BYTES))
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], EntryError> {
    if buf.len() < n {
        return Err(EntryError::Malformed("a field runs past the end"));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

fn u32_at(buf: &mut &[u8]) -> Result<u32, EntryError> {
    let b = take(buf, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decodes and verifies an entry.
pub fn decode(data: &[u8]) -> Result<Entry<'_>, EntryError> {
    if data.len() < HEADER_BYTES + CRC_BYTES {
        return Err(EntryError::Truncated(data.len()));
    }
    if &data[..4] != MAGIC {
        return Err(EntryError::BadMagic);
    }
    if data[4] != VERSION {
        return Err(EntryError::UnsupportedVersion(data[4]));
    }
    let (body, crc) = data.split_at(data.len() - CRC_BYTES);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(EntryError::Checksum { stored, computed });
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&body[8..16]);
    let term = Term(u64::from_le_bytes(t));
    let mut rest = &body[HEADER_BYTES..];
    match body[5] {
        KIND_BARRIER => {
            if !rest.is_empty() {
                return Err(EntryError::Malformed("trailing bytes after a barrier"));
            }
            Ok(Entry::Barrier { term })
        }
        KIND_FRAMES => {
            let n = take(&mut rest, 2)?;
            let name_len = u16::from_le_bytes([n[0], n[1]]) as usize;
            let name = std::str::from_utf8(take(&mut rest, name_len)?)
                .map_err(|_| EntryError::Malformed("database name is not UTF-8"))?;
            if !valid_name(name) {
                return Err(EntryError::Malformed("invalid database name"));
            }
            let page_size = u32_at(&mut rest)?;
            if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
                return Err(EntryError::Malformed("invalid page size"));
            }
            let db_size = u32_at(&mut rest)?;
            let count = u32_at(&mut rest)? as usize;
            if count == 0 || db_size == 0 {
                return Err(EntryError::Malformed("no pages or empty database"));
            }
            let pgnos = take(&mut rest, count.checked_mul(4).ok_or(EntryError::Malformed("page count overflow"))?)?;
            let pages_len =
                count.checked_mul(page_size as usize).ok_or(EntryError::Malformed("page count overflow"))?;
            let pages = take(&mut rest, pages_len)?;
            if !rest.is_empty() {
                return Err(EntryError::Malformed("trailing bytes after the pages"));
            }
            let mut prev = 0u32;
            for c in pgnos.chunks_exact(4) {
                let p = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if p <= prev {
                    return Err(EntryError::Malformed("page numbers not ascending"));
                }
                prev = p;
            }
            Ok(Entry::Frames(FramesEntry { guard: term, db: name, page_size, db_size, pgnos, pages }))
        }
        k => Err(EntryError::UnknownKind(k)),
    }
}

/// True if `name` is an acceptable database name: `[A-Za-z0-9._-]`, not starting with `.`,
/// 1 to 200 bytes (it becomes a file name in the data directory).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX_BYTES
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let pages = vec![(1, vec![1u8; 512]), (7, vec![7u8; 512])];
        encode_frames(Term(3), "app.db", 512, 9, &pages)
    }

    #[test]
    fn round_trip() {
        let data = sample();
        let Entry::Frames(f) = decode(&data).unwrap() else { panic!("kind") };
        assert_eq!((f.guard, f.db, f.page_size, f.db_size, f.page_count()), (Term(3), "app.db", 512, 9, 2));
        let pages: Vec<_> = f.pages().map(|(n, p)| (n, p[0])).collect();
        assert_eq!(pages, vec![(1, 1), (7, 7)]);
        assert_eq!(decode(&encode_barrier(Term(5))).unwrap(), Entry::Barrier { term: Term(5) });
    }

    #[test]
    fn every_damage_is_an_error() {
        let data = sample();
        for i in 0..data.len() {
            let mut d = data.clone();
            d[i] ^= 0x40;
            assert!(decode(&d).is_err(), "flip at {i}");
        }
        for n in 0..data.len() {
            assert!(decode(&data[..n]).is_err(), "truncated to {n}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A seeded xorshift stream of random inputs, some starting with a valid header.
        let seed: u64 = std::env::var("ENTRY_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9);
        println!("ENTRY_FUZZ_SEED={seed}");
        let mut x = seed | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let base = sample();
        for _ in 0..20_000 {
            let len = (next() % 1200) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && len >= 16 {
                d[..16].copy_from_slice(&base[..16]);
                let crc = crc32c::crc32c(&d[..len - 4]);
                d[len - 4..].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = decode(&d);
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("app.db") && valid_name("a-b_c.1"));
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(201)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
