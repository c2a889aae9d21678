//! Follower apply: appending a committed entry's frames to the local WAL and publishing them in
//! the wal-index exactly as SQLite's `walIndexAppend()` / `walIndexWriteHdr()` /
//! `walRestartHdr()` do (layout: sqlite.org/walformat.html), and scanning a WAL at restart.
//!
//! The caller holds SQLite's WAL write lock (`BEGIN IMMEDIATE` on the apply connection), so no
//! other writer runs; readers pick up the new frames only when the header is rewritten, which
//! happens last (second copy, barrier, first copy), so no reader sees a partial entry.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::vfs::{Region, Shm};

use super::entry::{frames_digest, FramesEntry};

const WAL_MAGIC: u32 = 0x377f_0682;
const WAL_VERSION: u32 = 3_007_000;
const WAL_HDR: u64 = 32;
const FRAME_HDR: u64 = 24;
/// Size of one copy of the wal-index header.
const IDX_HDR: usize = 48;
/// Both header copies and the checkpoint info.
const IDX_HDR_SIZE: usize = 136;
const NBACKFILL: usize = 96;
const READMARK: usize = 100;
const NBACKFILL_ATTEMPTED: usize = 128;
const HASHTABLE_NPAGE: u32 = 4096;
const HASHTABLE_NSLOT: u32 = 8192;
const HASHTABLE_HASH_1: u32 = 383;
const HASHTABLE_NPAGE_ONE: u32 = HASHTABLE_NPAGE - (IDX_HDR_SIZE as u32 / 4);
const READMARK_NOT_USED: u32 = 0xffff_ffff;
/// `WAL_READ_LOCK(1)` and the number of reader slots after it.
const READ_LOCK_1: u32 = 4;
const NREADER_AFTER_0: u32 = 4;
const BIG_ENDIAN_HOST: bool = cfg!(target_endian = "big");

/// Why an append or scan failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// I/O on the WAL file.
    #[error("WAL I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A SQLite VFS call failed.
    #[error("wal-index access failed with SQLite code {0}")]
    Shm(i32),
    /// The entry does not fit this database.
    #[error("{0}")]
    Mismatch(String),
    /// The wal-index is inconsistent.
    #[error("wal-index corrupt: {0}")]
    Corrupt(&'static str),
    /// The sidecar could not be written before a new generation.
    #[error("{0}")]
    Sidecar(String),
}

/// The wal-index header (`WalIndexHdr`), native byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexHdr {
    pub version: u32,
    pub change: u32,
    pub is_init: u8,
    pub big_end_cksum: u8,
    pub sz_page: u16,
    pub mx_frame: u32,
    pub n_page: u32,
    pub frame_cksum: [u32; 2],
    /// The salts as raw bytes (SQLite copies them from the WAL header without swapping).
    pub salt: [u8; 8],
    pub cksum: [u32; 2],
}

impl IndexHdr {
    fn to_bytes(self) -> [u8; IDX_HDR] {
        let mut b = [0u8; IDX_HDR];
        b[0..4].copy_from_slice(&self.version.to_ne_bytes());
        b[8..12].copy_from_slice(&self.change.to_ne_bytes());
        b[12] = self.is_init;
        b[13] = self.big_end_cksum;
        b[14..16].copy_from_slice(&self.sz_page.to_ne_bytes());
        b[16..20].copy_from_slice(&self.mx_frame.to_ne_bytes());
        b[20..24].copy_from_slice(&self.n_page.to_ne_bytes());
        b[24..28].copy_from_slice(&self.frame_cksum[0].to_ne_bytes());
        b[28..32].copy_from_slice(&self.frame_cksum[1].to_ne_bytes());
        b[32..40].copy_from_slice(&self.salt);
        b[40..44].copy_from_slice(&self.cksum[0].to_ne_bytes());
        b[44..48].copy_from_slice(&self.cksum[1].to_ne_bytes());
        b
    }

    fn from_bytes(b: &[u8; IDX_HDR]) -> IndexHdr {
        let u = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[32..40]);
        IndexHdr {
            version: u(0),
            change: u(8),
            is_init: b[12],
            big_end_cksum: b[13],
            sz_page: u16::from_ne_bytes([b[14], b[15]]),
            mx_frame: u(16),
            n_page: u(20),
            frame_cksum: [u(24), u(28)],
            salt,
            cksum: [u(40), u(44)],
        }
    }

    /// The page size this header records (0 if none yet).
    pub fn page_size(&self) -> u32 {
        let s = self.sz_page as u32;
        (s & 0xfe00) + ((s & 0x0001) << 16)
    }
}

/// SQLite's `walChecksumBytes`: `native` reads words in host order, otherwise byte-swapped.
fn checksum(native: bool, data: &[u8], init: [u32; 2]) -> [u32; 2] {
    let (mut s1, mut s2) = (init[0], init[1]);
    for w in data.chunks_exact(8) {
        let mut a = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
        let mut b = u32::from_ne_bytes([w[4], w[5], w[6], w[7]]);
        if !native {
            a = a.swap_bytes();
            b = b.swap_bytes();
        }
        s1 = s1.wrapping_add(a).wrapping_add(s2);
        s2 = s2.wrapping_add(b).wrapping_add(s1);
    }
    [s1, s2]
}

/// Reads the header copy at offset 0.
pub fn read_hdr(r0: &Region<'_>) -> IndexHdr {
    let mut b = [0u8; IDX_HDR];
    r0.read(0, &mut b);
    IndexHdr::from_bytes(&b)
}

fn write_hdr(shm: &Shm<'_>, r0: &Region<'_>, hdr: &mut IndexHdr) {
    hdr.is_init = 1;
    hdr.version = WAL_VERSION;
    let bytes = hdr.to_bytes();
    hdr.cksum = checksum(true, &bytes[..40], [0, 0]);
    let bytes = hdr.to_bytes();
    r0.write(IDX_HDR, &bytes);
    shm.barrier();
    r0.write(0, &bytes);
}

/// `nBackfill` of the checkpoint info.
pub fn n_backfill(r0: &Region<'_>) -> u32 {
    r0.u32(NBACKFILL)
}

/// `mxFrame` of the first header copy (one aligned word: read without tearing).
pub fn mx_frame(r0: &Region<'_>) -> u32 {
    r0.u32(16)
}

fn frame_page(frame: u32) -> u32 {
    (frame + HASHTABLE_NPAGE - HASHTABLE_NPAGE_ONE - 1) / HASHTABLE_NPAGE
}

struct HashLoc<'s> {
    region: Region<'s>,
    /// Byte offset of aPgno[0] (the page of frame `zero + 1`).
    pgno_off: usize,
    /// Frame number before the first one this table indexes.
    zero: u32,
}

const HASH_OFF: usize = (HASHTABLE_NPAGE * 4) as usize;

fn hash_loc<'s>(shm: &'s Shm<'_>, ih: u32) -> Result<HashLoc<'s>, WalError> {
    let region = shm.region(ih).map_err(WalError::Shm)?;
    Ok(if ih == 0 {
        HashLoc { region, pgno_off: IDX_HDR_SIZE, zero: 0 }
    } else {
        HashLoc { region, pgno_off: 0, zero: HASHTABLE_NPAGE_ONE + (ih - 1) * HASHTABLE_NPAGE }
    })
}

/// `walCleanupHash`: forget hash entries for frames after `mx_frame`.
fn cleanup_hash(shm: &Shm<'_>, mx_frame: u32) -> Result<(), WalError> {
    if mx_frame == 0 {
        return Ok(());
    }
    let loc = hash_loc(shm, frame_page(mx_frame))?;
    let limit = mx_frame - loc.zero;
    for i in 0..HASHTABLE_NSLOT as usize {
        if u32::from(loc.region.u16(HASH_OFF + i * 2)) > limit {
            loc.region.set_u16(HASH_OFF + i * 2, 0);
        }
    }
    let from = loc.pgno_off + limit as usize * 4;
    loc.region.zero(from, HASH_OFF - from);
    Ok(())
}

/// `walIndexAppend`: map `pgno` to `frame` in the hash tables.
fn index_append(shm: &Shm<'_>, committed_mx: u32, frame: u32, pgno: u32) -> Result<(), WalError> {
    let loc = hash_loc(shm, frame_page(frame))?;
    let idx = frame - loc.zero;
    if idx == 1 {
        loc.region.zero(loc.pgno_off, HASH_OFF + HASHTABLE_NSLOT as usize * 2 - loc.pgno_off);
    }
    if loc.region.u32(loc.pgno_off + (idx as usize - 1) * 4) != 0 {
        cleanup_hash(shm, committed_mx)?;
    }
    let mut key = (pgno.wrapping_mul(HASHTABLE_HASH_1)) & (HASHTABLE_NSLOT - 1);
    let mut collide = idx;
    while loc.region.u16(HASH_OFF + key as usize * 2) != 0 {
        if collide == 0 {
            return Err(WalError::Corrupt("hash table full"));
        }
        collide -= 1;
        key = (key + 1) & (HASHTABLE_NSLOT - 1);
    }
    loc.region.set_u32(loc.pgno_off + (idx as usize - 1) * 4, pgno);
    loc.region.set_u16(HASH_OFF + key as usize * 2, idx as u16);
    Ok(())
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// A new WAL generation was started (the WAL was rewritten from its beginning).
    pub new_generation: bool,
    /// The last frame now in the WAL.
    pub mx_frame: u32,
}

/// Appends `entry`'s pages as one commit. `new_gen(salts)` is called (and must make the sidecar
/// durable) before a new WAL header is written. The caller holds the WAL write lock.
pub fn append(
    shm: &Shm<'_>,
    wal: &File,
    entry: &FramesEntry<'_>,
    new_gen: &mut dyn FnMut([u8; 8]) -> Result<(), WalError>,
) -> Result<Appended, WalError> {
    let r0 = shm.region(0).map_err(WalError::Shm)?;
    let mut hdr = read_hdr(&r0);
    let page_size = entry.page_size;
    let mut new_generation = false;
    if hdr.mx_frame > 0 && hdr.page_size() != page_size {
        return Err(WalError::Mismatch(format!(
            "entry page size {page_size} differs from the WAL's {}",
            hdr.page_size()
        )));
    }
    // walRestartLog: everything backfilled and no reader on the WAL -> start over.
    let mut restart = hdr.mx_frame == 0;
    if hdr.mx_frame > 0 && n_backfill(&r0) == hdr.mx_frame {
        let flags = libsqlite3_sys::SQLITE_SHM_LOCK | libsqlite3_sys::SQLITE_SHM_EXCLUSIVE;
        if shm.lock(READ_LOCK_1, NREADER_AFTER_0, flags) == libsqlite3_sys::SQLITE_OK {
            restart = true;
        }
    }
    if restart {
        let locked = hdr.mx_frame > 0;
        let res = (|| {
            let mut old = [0u8; 32];
            let n = wal.read_at(&mut old, 0)?;
            let ckpt_seq = if n == 32 && u32::from_be_bytes([old[0], old[1], old[2], old[3]]) & !1 == WAL_MAGIC {
                u32::from_be_bytes([old[12], old[13], old[14], old[15]]).wrapping_add(1)
            } else {
                0
            };
            let mut salt = hdr.salt;
            let s1 = u32::from_be_bytes([salt[0], salt[1], salt[2], salt[3]]).wrapping_add(1);
            salt[0..4].copy_from_slice(&s1.to_be_bytes());
            crate::vfs::randomness(&mut salt[4..8]);
            new_gen(salt)?;
            let mut h = [0u8; 32];
            h[0..4].copy_from_slice(&(WAL_MAGIC | u32::from(BIG_ENDIAN_HOST)).to_be_bytes());
            h[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
            h[8..12].copy_from_slice(&page_size.to_be_bytes());
            h[12..16].copy_from_slice(&ckpt_seq.to_be_bytes());
            h[16..24].copy_from_slice(&salt);
            let ck = checksum(true, &h[..24], [0, 0]);
            h[24..28].copy_from_slice(&ck[0].to_be_bytes());
            h[28..32].copy_from_slice(&ck[1].to_be_bytes());
            wal.write_all_at(&h, 0)?;
            // walRestartHdr.
            hdr.mx_frame = 0;
            hdr.salt = salt;
            hdr.frame_cksum = ck;
            hdr.big_end_cksum = u8::from(BIG_ENDIAN_HOST);
            write_hdr(shm, &r0, &mut hdr);
            r0.set_u32(NBACKFILL, 0);
            r0.set_u32(NBACKFILL_ATTEMPTED, 0);
            r0.set_u32(READMARK + 4, 0);
            for i in 2..5 {
                r0.set_u32(READMARK + 4 * i, READMARK_NOT_USED);
            }
            Ok::<(), WalError>(())
        })();
        if locked {
            let flags = libsqlite3_sys::SQLITE_SHM_UNLOCK | libsqlite3_sys::SQLITE_SHM_EXCLUSIVE;
            shm.lock(READ_LOCK_1, NREADER_AFTER_0, flags);
        }
        res?;
        new_generation = true;
    }
    let committed_mx = hdr.mx_frame;
    let native = hdr.big_end_cksum == u8::from(BIG_ENDIAN_HOST);
    let frame_bytes = (FRAME_HDR + page_size as u64) as usize;
    let count = entry.page_count();
    let mut ck = hdr.frame_cksum;
    let mut frame = committed_mx;
    let mut out = Vec::with_capacity(frame_bytes * count.min(32));
    let mut out_off = WAL_HDR + committed_mx as u64 * frame_bytes as u64;
    let mut pgnos = Vec::with_capacity(count);
    for (i, (pgno, page)) in entry.pages().enumerate() {
        let mut fh = [0u8; 24];
        fh[0..4].copy_from_slice(&pgno.to_be_bytes());
        let trunc = if i + 1 == count { entry.db_size } else { 0 };
        fh[4..8].copy_from_slice(&trunc.to_be_bytes());
        fh[8..16].copy_from_slice(&hdr.salt);
        ck = checksum(native, &fh[..8], ck);
        ck = checksum(native, page, ck);
        fh[16..20].copy_from_slice(&ck[0].to_be_bytes());
        fh[20..24].copy_from_slice(&ck[1].to_be_bytes());
        out.extend_from_slice(&fh);
        out.extend_from_slice(page);
        frame += 1;
        pgnos.push(pgno);
        if out.len() >= 128 * 1024 {
            wal.write_all_at(&out, out_off)?;
            out_off += out.len() as u64;
            out.clear();
        }
    }
    if !out.is_empty() {
        wal.write_all_at(&out, out_off)?;
    }
    for (k, pgno) in pgnos.into_iter().enumerate() {
        index_append(shm, committed_mx, committed_mx + 1 + k as u32, pgno)?;
    }
    hdr.mx_frame = frame;
    hdr.n_page = entry.db_size;
    hdr.change = hdr.change.wrapping_add(1);
    hdr.frame_cksum = ck;
    hdr.sz_page = ((page_size & 0xff00) | (page_size >> 16)) as u16;
    write_hdr(shm, &r0, &mut hdr);
    Ok(Appended { new_generation, mx_frame: frame })
}

/// The commits of a WAL file up to `mx_frame` (as recovered by SQLite).
#[derive(Debug, Default)]
pub struct WalScan {
    /// The generation's salts (zero if the WAL has no valid header).
    pub salts: [u8; 8],
    /// The frames digest of every commit, in order.
    pub commits: Vec<u32>,
}

/// Reads the WAL at `path` up to frame `mx_frame` and returns its commits' digests.
pub fn scan(path: &Path, mx_frame: u32) -> Result<WalScan, WalError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WalScan::default()),
        Err(e) => return Err(e.into()),
    };
    let mut h = [0u8; 32];
    if f.read_at(&mut h, 0)? < 32 {
        return Ok(WalScan::default());
    }
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[16..24]);
    let page_size = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as u64;
    let mut commits = Vec::new();
    if mx_frame == 0 {
        return Ok(WalScan { salts, commits });
    }
    if !(512..=65536).contains(&page_size) {
        return Err(WalError::Corrupt("WAL header page size"));
    }
    let frame_bytes = FRAME_HDR + page_size;
    let mut buf = vec![0u8; frame_bytes as usize];
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for i in 0..mx_frame as u64 {
        f.read_exact_at(&mut buf, WAL_HDR + i * frame_bytes)?;
        let pgno = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let trunc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        pages.insert(pgno, buf[FRAME_HDR as usize..].to_vec());
        if trunc != 0 {
            commits.push(frames_digest(trunc, pages.iter().map(|(n, p)| (*n, p.as_slice()))));
            pages.clear();
        }
    }
    Ok(WalScan { salts, commits })
}

/// Scans a whole WAL file the way SQLite's recovery does (valid header, matching salts,
/// checksum chain, up to the last commit frame) and returns its commits' digests.
pub fn scan_all(path: &Path) -> Result<WalScan, WalError> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(WalScan::default()),
        Err(e) => return Err(e.into()),
    };
    let mut h = [0u8; 32];
    if f.read_at(&mut h, 0)? < 32 {
        return Ok(WalScan::default());
    }
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic & !1 != WAL_MAGIC {
        return Ok(WalScan::default());
    }
    let native = (magic & 1 == 1) == BIG_ENDIAN_HOST;
    let ck = checksum(native, &h[..24], [0, 0]);
    if ck[0] != u32::from_be_bytes([h[24], h[25], h[26], h[27]])
        || ck[1] != u32::from_be_bytes([h[28], h[29], h[30], h[31]])
    {
        return Ok(WalScan::default());
    }
    let page_size = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as u64;
    let mut salts = [0u8; 8];
    salts.copy_from_slice(&h[16..24]);
    let mut run = ck;
    let frame_bytes = FRAME_HDR + page_size;
    let mut buf = vec![0u8; frame_bytes as usize];
    let mut mx = 0u32;
    let mut last_commit = 0u32;
    loop {
        let off = WAL_HDR + mx as u64 * frame_bytes;
        if f.read_at(&mut buf, off)? < buf.len() || buf[8..16] != salts || buf[0..4] == [0; 4] {
            break;
        }
        run = checksum(native, &buf[..8], run);
        run = checksum(native, &buf[FRAME_HDR as usize..], run);
        if run[0] != u32::from_be_bytes([buf[16], buf[17], buf[18], buf[19]])
            || run[1] != u32::from_be_bytes([buf[20], buf[21], buf[22], buf[23]])
        {
            break;
        }
        mx += 1;
        if buf[4..8] != [0; 4] {
            last_commit = mx;
        }
    }
    scan(path, last_commit)
}
