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
    /// Written since the last `fdatasync` (by `write_at`): the next synced batch must sync the
    /// whole file, not only its own writes.
    dirty: bool,
    /// Fault to inject into the next `submit`.
    #[cfg(test)]
    fault: Option<Fault>,
    /// Whole-file syncs (`fdatasync`) made by `submit`.
    #[cfg(test)]
    full_syncs: usize,
}

impl std::fmt::Debug for UringFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringFile").field("name", &self.name).field("direct", &self.direct.is_some()).finish()
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

/// After a failed `io_uring_enter`: wait until the kernel has completed the `in_flight`
/// entries it already took, reading the completion queue without system calls (the kernel
/// posts completions there whether or not anyone waits). Those entries reference buffers the
/// caller gets back when `submit` returns, so this must not return before they are done;
/// if the kernel never completes them (a hung device), the process aborts rather than let
/// the kernel read memory the caller reuses.
fn wait_in_flight(ring: &mut IoUring, mut in_flight: usize) {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(120);
    let start = std::time::Instant::now();
    while in_flight > 0 {
        let n = ring.completion().count();
        in_flight = in_flight.saturating_sub(n);
        if in_flight == 0 {
            break;
        }
        if start.elapsed() > BOUND {
            tracing::error!(in_flight, "io_uring entries never completed after a failed submission; aborting");
            std::process::abort();
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

/// Faults the tests inject into one `submit` call.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Queueing fails after this many entries (as if the submission queue were full).
    PushFailsAfter(usize),
    /// The entries reach the kernel, then `io_uring_enter` fails.
    WaitFailsAfterSubmit,
}

impl UringFile {
    fn is_direct_ok(&self, offset: u64, len: usize) -> bool {
        self.direct.is_some() && offset % DIRECT_ALIGN as u64 == 0 && len % DIRECT_ALIGN == 0 && len > 0
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
                subs.push(Submitted { fd, offset: *offset, ptr: self.bounce[pos..].as_ptr(), len: data.len() });
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

        // A synced batch of O_DIRECT writes into a file with nothing else unsynced: each write
        // carries RWF_DSYNC (durable when it completes, as `fdatasync` of its range would make
        // it) instead of a linked `fdatasync`, which io_uring runs on a worker thread (a hand-off
        // of ~50 us per append here). Any error of such a write but ENOSPC leaves durability
        // unknown, so it is reported as a sync failure.
        let dsync = sync && !self.dirty && !subs.is_empty() && subs.iter().all(|s| s.fd == direct_fd && s.fd >= 0);
        if !sync {
            self.dirty = true;
        }
        if self.ring.is_none() {
            self.ring = Some(Ring { ring: IoUring::new(RING_ENTRIES).map_err(Write)?, broken: false });
        }
        #[cfg(test)]
        let mut fault = self.fault.take();
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
        let mut sync_done = !sync || dsync;
        let chunks: Vec<&[Submitted]> = if subs.is_empty() { vec![&[]] } else { subs.chunks(cap).collect() };
        let n_chunks = chunks.len();
        let mut sub_base = 0usize;
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let last = ci + 1 == n_chunks;
            let with_sync = sync && last && !dsync;
            let mut expected = 0usize;
            // Entries are only queued here; the kernel sees none of them before the submit
            // below. If queueing fails, the ring is marked broken so they are never submitted
            // (a ring dropped with unsubmitted entries never touches their buffers).
            let pushed = {
                let mut sq = guard.ring.submission();
                let mut push = |e: &squeue::Entry| -> bool {
                    #[cfg(test)]
                    if let Some(Fault::PushFailsAfter(n)) = fault {
                        if expected >= n {
                            return false;
                        }
                    }
                    // SAFETY: the buffer behind the entry (the caller's slice or `self.bounce`,
                    // neither touched until we return) and the descriptor stay valid until
                    // its completion is reaped: every submitted entry is reaped before this
                    // function returns (`in_flight` below; even on error paths).
                    let ok = unsafe { sq.push(e) }.is_ok();
                    expected += usize::from(ok);
                    ok
                };
                let mut ok = true;
                for (i, s) in chunk.iter().enumerate() {
                    let mut e = opcode::Write::new(types::Fd(s.fd), s.ptr, s.len as u32)
                        .offset(s.offset)
                        .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
                        .build()
                        .user_data((sub_base + i) as u64);
                    if with_sync {
                        e = e.flags(squeue::Flags::IO_LINK);
                    }
                    if !push(&e) {
                        ok = false;
                        break;
                    }
                }
                if ok && with_sync {
                    #[cfg(test)]
                    {
                        self.full_syncs += 1;
                    }
                    // Fsync references no user memory.
                    let e = opcode::Fsync::new(types::Fd(self.buffered.as_raw_fd()))
                        .flags(types::FsyncFlags::DATASYNC)
                        .build()
                        .user_data(u64::MAX);
                    ok = push(&e);
                }
                ok
            };
            if !pushed {
                guard.broken = true;
                return Err(Write(ring_err("submission queue full")));
            }
            if expected == 0 {
                continue;
            }
            // Submitted to the kernel and not yet reaped.
            let mut in_flight = 0usize;
            let mut unsubmitted = expected;
            let mut reaped = 0usize;
            let mut fatal: Option<io::Error> = None;
            while reaped < expected {
                if fatal.is_none() {
                    #[cfg(test)]
                    let injected = match fault {
                        Some(Fault::WaitFailsAfterSubmit) if unsubmitted > 0 => {
                            // Hand the entries to the kernel, then fail as a broken wait would.
                            let n = guard.ring.submit().unwrap_or(0);
                            unsubmitted -= n;
                            in_flight += n;
                            fault = None;
                            Some(io::Error::from_raw_os_error(libc::EBADF))
                        }
                        _ => None,
                    };
                    #[cfg(not(test))]
                    let injected: Option<io::Error> = None;
                    let result = match injected {
                        Some(e) => Err(e),
                        None => guard.ring.submit_and_wait(expected - reaped),
                    };
                    match result {
                        Ok(n) => {
                            let n = n.min(unsubmitted);
                            unsubmitted -= n;
                            in_flight += n;
                        }
                        Err(e)
                            if e.kind() == io::ErrorKind::Interrupted
                                || e.raw_os_error() == Some(libc::EBUSY)
                                || e.raw_os_error() == Some(libc::EAGAIN) => {}
                        // Never use this ring again (the caller poisons the store on a
                        // non-ENOSPC error); but first wait for what the kernel already has.
                        Err(e) => {
                            guard.broken = true;
                            fatal = Some(e);
                        }
                    }
                }
                if let Some(e) = fatal.take() {
                    wait_in_flight(&mut guard.ring, in_flight);
                    return Err(Write(e));
                }
                let cqes: Vec<(u64, i32)> = guard.ring.completion().map(|c| (c.user_data(), c.result())).collect();
                for (ud, res) in cqes {
                    reaped += 1;
                    in_flight = in_flight.saturating_sub(1);
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
                        // Keep reaping: the others still use our buffers.
                        guard.broken = true;
                        fatal = Some(ring_err("unexpected completion"));
                        continue;
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
                if fatal.is_some() && in_flight == 0 && unsubmitted == 0 {
                    break;
                }
            }
            if let Some(e) = fatal {
                wait_in_flight(&mut guard.ring, in_flight);
                return Err(Write(e));
            }
            sub_base += chunk.len();
        }
        if let Some(e) = first_err {
            if dsync && e.raw_os_error() != Some(libc::ENOSPC) {
                return Err(Sync(e));
            }
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
            #[cfg(test)]
            {
                self.full_syncs += 1;
            }
            self.buffered.sync_data().map_err(Sync)?;
        }
        if sync {
            self.dirty = false;
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
    fn write_all_sync_cached(&mut self, writes: &[(u64, &[u8])]) -> Result<(), BatchFailure> {
        self.dirty = true;
        for (offset, data) in writes {
            self.buffered.write_all_at(data, *offset).map_err(BatchFailure::Write)?;
        }
        self.buffered.sync_data().map_err(BatchFailure::Sync)?;
        self.dirty = false;
        Ok(())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.dirty = true;
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

impl UringBackend {
    fn open_file(&self, name: &str, mode: OpenMode) -> io::Result<UringFile> {
        let buffered = self.dir.open_std(name, mode)?;
        let direct = if self.direct {
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(self.dir.join(name)) {
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
        Ok(UringFile {
            name: name.to_owned(),
            buffered,
            direct,
            ring: None,
            bounce: Vec::new(),
            dirty: false,
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            full_syncs: 0,
        })
    }
}

impl Backend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }
    fn open(&self, name: &str, mode: OpenMode) -> io::Result<Box<dyn BackendFile>> {
        Ok(Box::new(self.open_file(name, mode)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, direct: bool) -> (UringBackend, UringFile) {
        let backend = UringBackend::with_direct_io(dir, direct).expect("io_uring available");
        let f = backend.open_file("f", OpenMode::CreateNew).expect("open");
        (backend, f)
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("uring-fault-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A synced batch of `O_DIRECT` writes carries RWF_DSYNC instead of an `fdatasync`, unless
    /// the file holds unsynced writes (`write_at`, `set_len`), which a whole-file sync must
    /// cover.
    #[test]
    fn dsync_writes_replace_the_fdatasync_only_when_nothing_else_is_unsynced() {
        let dir = temp("dsync");
        let (_backend, mut f) = file(&dir, true);
        if f.direct.is_none() {
            panic!("O_DIRECT refused in {}: this test needs a file system that takes it", dir.display());
        }
        let block = vec![7u8; DIRECT_ALIGN];
        f.write_all_sync(&[(0, &block[..])]).unwrap();
        assert_eq!(f.full_syncs, 0, "an aligned synced batch made a whole-file sync");
        // An unsynced write, then a synced batch: the batch's sync must cover both.
        f.write_at(2 * DIRECT_ALIGN as u64, b"unsynced").unwrap();
        f.write_all_sync(&[(DIRECT_ALIGN as u64, &block[..])]).unwrap();
        assert_eq!(f.full_syncs, 1, "a batch after an unsynced write did not sync the whole file");
        // Clean again: back to RWF_DSYNC.
        f.write_all_sync(&[(0, &block[..])]).unwrap();
        assert_eq!(f.full_syncs, 1);
        f.set_len(16 * DIRECT_ALIGN as u64).unwrap();
        f.write_all_sync(&[(0, &block[..])]).unwrap();
        assert_eq!(f.full_syncs, 2, "a batch after set_len did not sync the whole file");
        // An unaligned write goes through the page cache: always a whole-file sync.
        f.write_all_sync(&[(3, &b"abc"[..])]).unwrap();
        assert_eq!(f.full_syncs, 3);
        let mut back = vec![0u8; 8];
        f.read_at(2 * DIRECT_ALIGN as u64, &mut back).unwrap();
        assert_eq!(&back, b"unsynced");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A failed `io_uring_enter` after the kernel took the writes: `submit` returns the error
    /// only once the writes are done, so the caller may reuse its buffer at once.
    #[test]
    fn a_failed_wait_returns_only_after_every_submitted_write_completed() {
        for direct in [false, true] {
            let dir = temp(&format!("wait-{direct}"));
            let (_backend, mut f) = file(&dir, direct);
            // Large writes, so returning early would leave them in flight.
            let mut bufs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i + 1; 4 << 20]).collect();
            let writes: Vec<(u64, &[u8])> =
                bufs.iter().enumerate().map(|(i, b)| ((i as u64) * (4 << 20), &b[..])).collect();
            f.fault = Some(Fault::WaitFailsAfterSubmit);
            let err = f.submit(&writes, true).expect_err("injected failure");
            assert!(matches!(err, BatchFailure::Write(_)), "{err:?}");
            // Reuse the buffers at once: the file must hold what was submitted.
            for b in &mut bufs {
                b.fill(0xee);
            }
            let mut back = vec![0u8; 4 << 20];
            for i in 0..4u8 {
                f.read_at(u64::from(i) * (4 << 20), &mut back).unwrap();
                assert!(back.iter().all(|&x| x == i + 1), "write {i} (direct={direct}) not complete at return");
            }
            // The ring is never used again.
            assert!(f.submit(&[(0, &[1u8; 8][..])], false).is_err());
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    /// Queueing fails half-way: nothing reaches the kernel (the queued entries are never
    /// submitted, the ring is retired) and the file is unchanged.
    #[test]
    fn a_failed_push_submits_nothing() {
        let dir = temp("push");
        let (_backend, mut f) = file(&dir, false);
        f.submit(&[(0, &[7u8; 16][..])], true).unwrap();
        let a = vec![1u8; 4096];
        let b = vec![2u8; 4096];
        f.fault = Some(Fault::PushFailsAfter(1));
        let err = f.submit(&[(0, &a[..]), (4096, &b[..])], true).expect_err("injected failure");
        assert!(matches!(err, BatchFailure::Write(_)), "{err:?}");
        let mut back = vec![0u8; 16];
        f.read_at(0, &mut back).unwrap();
        assert_eq!(back, [7u8; 16], "a queued entry reached the kernel");
        assert_eq!(f.len().unwrap(), 16);
        assert!(f.submit(&[(0, &a[..])], true).is_err(), "a broken ring was used again");
        let _ = std::fs::remove_dir_all(dir);
    }
}
