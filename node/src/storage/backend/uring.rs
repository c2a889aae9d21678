//! io_uring backend (Linux): a batch's writes are linked to one `fdatasync` and submitted with
//! one system call (group commit). Block-aligned writes go through an `O_DIRECT` descriptor when
//! the file system accepts one (straight from the caller's buffer when it is 4096-aligned, else
//! through an aligned bounce buffer); everything else goes through
//! an ordinary descriptor of the same file. Reads use `pread` on the ordinary descriptor.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use io_uring::{opcode, squeue, types, IoUring};

use super::{dir::DataDir, Backend, BackendFile, BatchFailure, DirLock, OpenMode};

/// Submission queue size. Batches with more writes are submitted in several rounds.
const RING_ENTRIES: u32 = 64;
/// `O_DIRECT` alignment of offsets, lengths and buffers.
const DIRECT_ALIGN: usize = 4096;

/// The io_uring backend. Each file written to gets its own small ring, so writes to different
/// files (a log segment and a metadata file, or a segment being preallocated) never wait for
/// each other's submissions.
pub struct UringBackend {
    dir: DataDir,
    direct: bool,
}

impl std::fmt::Debug for UringBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringBackend").field("dir", &self.dir).field("direct", &self.direct).finish()
    }
}

impl UringBackend {
    /// Sets up a ring for `dir` (created if missing). Fails if the kernel refuses io_uring
    /// (`ENOSYS`, `EPERM` under seccomp or `io_uring_disabled`), so [`super::auto`] can fall back.
    pub fn new(dir: &Path) -> io::Result<Self> {
        Self::with_direct_io(dir, true)
    }

    /// Like [`UringBackend::new`], choosing whether to try `O_DIRECT` for aligned writes.
    pub fn with_direct_io(dir: &Path, direct: bool) -> io::Result<Self> {
        let dir = DataDir::create(dir)?;
        // Probe: fail here (so `auto` can fall back) rather than at the first open.
        drop(IoUring::new(RING_ENTRIES)?);
        Ok(UringBackend { dir, direct })
    }
}

/// The ring and whether a failed submission left it unusable.
struct Ring {
    ring: IoUring,
    broken: bool,
}

struct UringFile {
    name: String,
    buffered: File,
    direct: Option<File>,
    /// Created on the first write, so files only read (closed segments) hold no ring.
    ring: Option<Ring>,
    /// Bounce buffer for `O_DIRECT` writes whose source buffer is not aligned.
    bounce: Vec<u8>,
}

impl std::fmt::Debug for UringFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringFile")
            .field("name", &self.name)
            .field("direct", &self.direct.is_some())
            .finish()
    }
}

/// One write as submitted: which descriptor, where, what.
struct Submitted {
    fd: i32,
    offset: u64,
    /// Start and length inside the source buffer (`bounce` or the caller's slice).
    ptr: *const u8,
    len: usize,
}

fn ring_err(what: &str) -> io::Error {
    io::Error::other(format!("io_uring: {what}"))
}

impl UringFile {
    fn is_direct_ok(&self, offset: u64, len: usize) -> bool {
        self.direct.is_some()
            && offset % DIRECT_ALIGN as u64 == 0
            && len % DIRECT_ALIGN == 0
            && len > 0
    }

    /// Submits `writes` (then, if `sync`, one linked `fdatasync`) and waits for all of them.
    /// Short writes are finished with `pwrite` and the sync is then redone.
    fn submit(&mut self, writes: &[(u64, &[u8])], sync: bool) -> Result<(), BatchFailure> {
        use BatchFailure::{Sync, Write};
        // Lay the O_DIRECT-eligible writes out in the aligned bounce buffer first, so no
        // reallocation moves it while the kernel reads from it.
        let needs_bounce =
            |o: u64, d: &[u8]| self.is_direct_ok(o, d.len()) && d.as_ptr().align_offset(DIRECT_ALIGN) != 0;
        let direct_total: usize = writes.iter().filter(|(o, d)| needs_bounce(*o, d)).map(|(_, d)| d.len()).sum();
        if direct_total > 0 {
            let need = direct_total + DIRECT_ALIGN;
            if self.bounce.len() < need {
                self.bounce = vec![0u8; need];
            }
        }
        let base = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let mut pos = base;
        let mut subs = Vec::with_capacity(writes.len());
        let direct_fd = self.direct.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        for (offset, data) in writes {
            if self.is_direct_ok(*offset, data.len()) && data.as_ptr().align_offset(DIRECT_ALIGN) == 0 {
                subs.push(Submitted { fd: direct_fd, offset: *offset, ptr: data.as_ptr(), len: data.len() });
            } else if self.is_direct_ok(*offset, data.len()) {
                self.bounce[pos..pos + data.len()].copy_from_slice(data);
                let fd = direct_fd;
                subs.push(Submitted {
                    fd,
                    offset: *offset,
                    ptr: self.bounce[pos..].as_ptr(),
                    len: data.len(),
                });
                pos += data.len();
            } else if !data.is_empty() {
                subs.push(Submitted {
                    fd: self.buffered.as_raw_fd(),
                    offset: *offset,
                    ptr: data.as_ptr(),
                    len: data.len(),
                });
            }
        }

        if self.ring.is_none() {
            self.ring = Some(Ring { ring: IoUring::new(RING_ENTRIES).map_err(Write)?, broken: false });
        }
        let Some(guard) = self.ring.as_mut() else {
            return Err(Write(ring_err("no ring")));
        };
        if guard.broken {
            return Err(Write(ring_err("ring unusable after an earlier submission failure")));
        }
        let mut sync_err: Option<io::Error> = None;
        let cap = RING_ENTRIES as usize - 1;
        let mut short: Vec<(usize, usize)> = Vec::new(); // (sub index, bytes done)
        let mut first_err: Option<io::Error> = None;
        let mut sync_done = !sync;
        let chunks: Vec<&[Submitted]> = if subs.is_empty() { vec![&[]] } else { subs.chunks(cap).collect() };
        let n_chunks = chunks.len();
        let mut sub_base = 0usize;
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let last = ci + 1 == n_chunks;
            let with_sync = sync && last;
            let mut expected = 0usize;
            {
                let mut sq = guard.ring.submission();
                for (i, s) in chunk.iter().enumerate() {
                    let mut e = opcode::Write::new(types::Fd(s.fd), s.ptr, s.len as u32)
                        .offset(s.offset)
                        .build()
                        .user_data((sub_base + i) as u64);
                    if with_sync {
                        e = e.flags(squeue::Flags::IO_LINK);
                    }
                    // SAFETY: the buffer behind `s.ptr` (the caller's slice or `self.bounce`,
                    // neither touched until we return) and the descriptor stay valid until the
                    // completion is reaped below: we wait for every submitted entry before
                    // leaving this function.
                    unsafe { sq.push(&e) }.map_err(|_| Write(ring_err("submission queue full")))?;
                    expected += 1;
                }
                if with_sync {
                    let e = opcode::Fsync::new(types::Fd(self.buffered.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(u64::MAX);
                    // SAFETY: fsync references no user memory; the descriptor outlives the wait.
                    unsafe { sq.push(&e) }.map_err(|_| Sync(ring_err("submission queue full")))?;
                    expected += 1;
                }
            }
            if expected == 0 {
                continue;
            }
            let mut reaped = 0usize;
            while reaped < expected {
                match guard.ring.submit_and_wait(expected - reaped) {
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == io::ErrorKind::Interrupted
                            || e.raw_os_error() == Some(libc::EBUSY)
                            || e.raw_os_error() == Some(libc::EAGAIN) =>
                    {
                        continue
                    }
                    // Entries may still be in flight: never use this ring again (the caller
                    // poisons the store on a non-ENOSPC error).
                    Err(e) => {
                        guard.broken = true;
                        return Err(Write(e));
                    }
                }
                let cqes: Vec<(u64, i32)> = guard.ring.completion().map(|c| (c.user_data(), c.result())).collect();
                for (ud, res) in cqes {
                    reaped += 1;
                    if ud == u64::MAX {
                        if res < 0 {
                            if res != -libc::ECANCELED && sync_err.is_none() {
                                sync_err = Some(io::Error::from_raw_os_error(-res));
                            }
                        } else {
                            sync_done = true;
                        }
                        continue;
                    }
                    let idx = ud as usize;
                    if idx >= subs.len() {
                        guard.broken = true;
                        return Err(Write(ring_err("unexpected completion")));
                    }
                    if res < 0 {
                        if res != -libc::ECANCELED && first_err.is_none() {
                            first_err = Some(io::Error::from_raw_os_error(-res));
                        } else if res == -libc::ECANCELED {
                            short.push((idx, 0));
                        }
                    } else if (res as usize) < subs[idx].len {
                        short.push((idx, res as usize));
                    }
                }
            }
            sub_base += chunk.len();
        }
        if let Some(e) = first_err {
            return Err(Write(e));
        }
        if let Some(e) = sync_err {
            return Err(Sync(e));
        }
        if !short.is_empty() {
            // Rare: finish the remainder synchronously from the same buffers.
            for (idx, done) in short {
                let s = &subs[idx];
                // SAFETY: `s.ptr..s.ptr+s.len` is one of the caller's slices or a region of
                // `self.bounce`, both alive and unmodified since we built `subs`.
                let whole = unsafe { std::slice::from_raw_parts(s.ptr, s.len) };
                // The rest of a direct write may be unaligned: finish it through the buffered
                // descriptor (the same file; the sync below covers both).
                self.buffered.write_all_at(&whole[done..], s.offset + done as u64).map_err(Write)?;
            }
            sync_done = !sync;
        }
        if !sync_done {
            self.buffered.sync_data().map_err(Sync)?;
        }
        Ok(())
    }
}

impl BackendFile for UringFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.buffered.metadata()?.len())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.buffered.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.submit(&[(offset, data)], false).map_err(BatchFailure::into_io)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.submit(&[], true).map_err(BatchFailure::into_io)
    }
    fn write_all_sync(&mut self, writes: &[(u64, &[u8])]) -> Result<(), BatchFailure> {
        self.submit(writes, true)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.buffered.set_len(len)
    }
    fn alignment(&self) -> usize {
        if self.direct.is_some() {
            DIRECT_ALIGN
        } else {
            1
        }
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>> {
        let buffered = self.dir.open_std(name, mode)?;
        let direct = if self.direct {
            match OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(self.dir.join(name))
            {
                Ok(f) => Some(f),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!(file = name, "O_DIRECT refused, using buffered writes");
                    None
                }
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        Ok(Box::new(UringFile {
            name: name.to_owned(),
            buffered,
            direct,
            ring: None,
            bounce: Vec::new(),
        }))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.dir.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.dir.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.dir.sync()
    }
    fn list(&self) -> io::Result<Vec<String>> {
        self.dir.list()
    }
    fn lock(&self) -> io::Result<Box<dyn DirLock>> {
        self.dir.lock()
    }
    fn describe(&self) -> String {
        self.dir.describe()
    }
}
