//! Durable log append benchmark: the storage backends next to a raw `pwrite` + `fdatasync` loop.
//!
//! ```text
//! cargo run --release -p dqlite-node --example log_bench -- [DIR] [SECONDS_PER_CASE] [compact|grow]
//! ```
//!
//! For 1 and 64 entries per batch (1024-byte payloads), each backend appends batches to a fresh
//! data directory (default segment size, segment preparation included in the timing), and a raw loop
//! `pwrite`s the same number of bytes (the encoded batch, written through the same format
//! encoder) into a preallocated, pre-zeroed file followed by `fdatasync`. Both run in this
//! process, in the same directory, interleaved in short rounds so machine noise hits both.
//! Printed: p50/p99 latency per batch, records/s, and the ratios backend/raw.
//!
//! Mode `compact` (default) is a node's steady state: the log is compacted behind the writer
//! (keeping the newest [`KEEP_ENTRIES`] entries, as after snapshots), so freed segments are
//! recycled; the compaction calls count in the rate but not in the per-append latency. Mode
//! `grow` never compacts: every segment is a fresh file whose zeros are written ahead.
//! DIR defaults to `target/log-bench` (it must be on the file system you care about).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite_node::raft::{Entry, EntryKind, LogIndex, Term};
use dqlite_node::storage::backend::{Backend, PortableBackend};
use dqlite_node::storage::{format, Storage, StorageOptions};

const PAYLOAD_BYTES: usize = 1024;
const RAW_FILE_BYTES: u64 = 256 * 1024 * 1024;
const ROUNDS: usize = 4;
/// Entries kept behind the writer in `compact` mode (about two default segments).
const KEEP_ENTRIES: u64 = 16 * 1024;

#[derive(Default)]
struct Samples {
    lat_ns: Vec<u64>,
    batches: u64,
    elapsed: Duration,
}

impl Samples {
    fn percentile_us(&mut self, p: f64) -> f64 {
        if self.lat_ns.is_empty() {
            return 0.0;
        }
        self.lat_ns.sort_unstable();
        let i = ((self.lat_ns.len() - 1) as f64 * p).round() as usize;
        self.lat_ns[i] as f64 / 1000.0
    }
    fn records_per_s(&self, batch: usize) -> f64 {
        (self.batches * batch as u64) as f64 / self.elapsed.as_secs_f64()
    }
}

fn make_batch(first: u64, n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(first + i as u64),
            kind: EntryKind::Command,
            data: vec![(first as usize + i) as u8; PAYLOAD_BYTES],
        })
        .collect()
}

/// Raw baseline: a preallocated, pre-zeroed file; pwrite + fdatasync per batch; wraps around.
struct Raw {
    file: std::fs::File,
    offset: u64,
    bytes: Vec<u8>,
}

impl Raw {
    fn new(dir: &Path, batch: usize) -> std::io::Result<Raw> {
        let path = dir.join(format!("raw-{batch}"));
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < RAW_FILE_BYTES {
            file.write_all_at(&zeros, off)?;
            off += zeros.len() as u64;
        }
        file.sync_all()?;
        OpenOptions::new().read(true).open(dir)?.sync_all()?;
        let mut bytes = Vec::new();
        format::encode_batch(&mut bytes, 1, LogIndex(1), 0, &make_batch(1, batch));
        Ok(Raw { file, offset: 0, bytes })
    }

    fn run(&mut self, until: Instant, s: &mut Samples) -> std::io::Result<()> {
        let start = Instant::now();
        while Instant::now() < until {
            if self.offset + self.bytes.len() as u64 > RAW_FILE_BYTES {
                self.offset = 0;
            }
            let t = Instant::now();
            self.file.write_all_at(&self.bytes, self.offset)?;
            self.file.sync_data()?;
            s.lat_ns.push(t.elapsed().as_nanos() as u64);
            self.offset += self.bytes.len() as u64;
            s.batches += 1;
        }
        s.elapsed += start.elapsed();
        Ok(())
    }
}

struct Store {
    storage: Storage,
    next: u64,
    batch: usize,
    entries: Vec<Entry>,
    compact: bool,
}

impl Store {
    fn new(backend: Arc<dyn Backend>, batch: usize, compact: bool) -> Result<Store, Box<dyn std::error::Error>> {
        let storage = Storage::open(backend, StorageOptions::default())?;
        let mut s = Store { storage, next: 1, batch, entries: make_batch(1, batch), compact };
        // Warm-up: creates the first segment.
        let until = Instant::now() + Duration::from_millis(100);
        let mut junk = Samples::default();
        s.run(until, &mut junk)?;
        Ok(s)
    }

    fn run(&mut self, until: Instant, s: &mut Samples) -> Result<(), Box<dyn std::error::Error>> {
        let start = Instant::now();
        while Instant::now() < until {
            for (i, e) in self.entries.iter_mut().enumerate() {
                e.index = LogIndex(self.next + i as u64);
            }
            let t = Instant::now();
            self.storage.log.append(&self.entries)?;
            s.lat_ns.push(t.elapsed().as_nanos() as u64);
            self.next += self.batch as u64;
            s.batches += 1;
            if self.compact && self.next > KEEP_ENTRIES + self.storage.log.first_index().0 + 4096 {
                self.storage.log.compact(LogIndex(self.next - KEEP_ENTRIES))?;
            }
        }
        s.elapsed += start.elapsed();
        Ok(())
    }
}

/// Makes a backend rooted at a directory.
type MakeBackend = Box<dyn Fn(&Path) -> std::io::Result<Arc<dyn Backend>>>;

fn backends() -> Vec<(&'static str, MakeBackend)> {
    let mut v: Vec<(&'static str, MakeBackend)> = Vec::new();
    #[cfg(target_os = "linux")]
    v.push((
        "io_uring",
        Box::new(|d: &Path| {
            dqlite_node::storage::backend::UringBackend::new(d).map(|b| Arc::new(b) as Arc<dyn Backend>)
        }),
    ));
    v.push(("portable", Box::new(|d: &Path| PortableBackend::new(d).map(|b| Arc::new(b) as Arc<dyn Backend>))));
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target/log-bench"));
    let secs: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let compact = match args.get(3).map(String::as_str) {
        None | Some("compact") => true,
        Some("grow") => false,
        Some(other) => return Err(format!("mode must be compact or grow, not {other}").into()),
    };
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    println!(
        "log_bench: dir {} , {PAYLOAD_BYTES}-byte payloads, {secs} s per case in {ROUNDS} interleaved rounds, mode {}",
        dir.display(),
        if compact { "compact" } else { "grow" }
    );
    println!(
        "{:<10} {:>5} | {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>8} {:>8} {:>8}",
        "backend", "batch", "p50 us", "p99 us", "rec/s", "raw p50", "raw p99", "raw rec/s", "p50 x", "p99 x", "rate x"
    );
    for batch in [1usize, 64] {
        for (name, make) in backends() {
            let case_dir = dir.join(format!("{name}-{batch}"));
            std::fs::create_dir_all(&case_dir)?;
            let mut raw = Raw::new(&dir, batch)?;
            let mut store = Store::new(make(&case_dir)?, batch, compact)?;
            let (mut rs, mut ss) = (Samples::default(), Samples::default());
            let slice = Duration::from_secs_f64(secs / ROUNDS as f64);
            for _ in 0..ROUNDS {
                raw.run(Instant::now() + slice, &mut rs)?;
                store.run(Instant::now() + slice, &mut ss)?;
            }
            let (sp50, sp99, srate) = (ss.percentile_us(0.5), ss.percentile_us(0.99), ss.records_per_s(batch));
            let (rp50, rp99, rrate) = (rs.percentile_us(0.5), rs.percentile_us(0.99), rs.records_per_s(batch));
            println!(
                "{:<10} {:>5} | {:>9.1} {:>9.1} {:>10.0} | {:>9.1} {:>9.1} {:>10.0} | {:>8.2} {:>8.2} {:>8.2}",
                name,
                batch,
                sp50,
                sp99,
                srate,
                rp50,
                rp99,
                rrate,
                sp50 / rp50,
                sp99 / rp99,
                srate / rrate
            );
            drop(store);
            let _ = std::fs::remove_dir_all(&case_dir);
            let _ = std::fs::remove_file(dir.join(format!("raw-{batch}")));
        }
    }
    println!("p50 x / p99 x: backend latency / raw latency (lower is better; target <= 1.5 for batch 1)");
    println!("rate x: backend records/s / raw records/s (higher is better; target >= 0.7 for batch 64)");
    Ok(())
}
