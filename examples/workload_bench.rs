//! # Workload benchmark
//!
//! Runs BENCH.md's workloads through sqlx — `kvwrite`, `kvreadwrite`, `bank`, `bulk`, `scan` —
//! with W concurrent workers for D seconds, and prints ops/s, p50, p99 and errors per operation
//! kind, with a progress line every second.
//!
//! ```text
//! cargo run --release --example workload_bench -- --launch real --nodes 3 --workload kvwrite --workers 8
//! cargo run --release --example workload_bench -- --url 'dqlite://127.0.0.1:9001/bench.db?peers=127.0.0.1:9002'
//! cargo run --release --example workload_bench -- --sqlite /tmp/bench.sqlite --workload kvwrite
//! ```
//!
//! Targets: `--url dqlite://…` (any cluster speaking dqlite's protocol: real C dqlite or ours),
//! `--launch NAME --nodes N` (starts a throw-away cluster on loopback with a
//! [`dqlite::testing`] launcher, e.g. `real` for C dqlite 1.11 from Debian's `go-dqlite`), or
//! `--sqlite FILE` (sqlx-sqlite on a local file in WAL mode with `synchronous=FULL`: what a user
//! has without replication). `--json` adds one machine-readable line per operation kind, for
//! scripts.
//!
//! The workloads (BENCH.md):
//! - `kvwrite`: `INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)`, key 32 random letters,
//!   value 1024 bytes (512 copies of one random letter, then 512 random letters), autocommit;
//! - `kvreadwrite`: each operation a write as above or a point read of a key the worker wrote
//!   earlier, with probability 1/2 each;
//! - `bank`: a transaction moving money between two of 1,000 accounts (two updates, a read);
//!   afterwards the total balance is checked;
//! - `bulk`: transactions inserting 1,000 rows each;
//! - `scan`: range reads returning 10,000 rows from a 20,000-row table.

use std::collections::BTreeMap;
use std::error::Error;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use sqlx_dqlite::{DqliteConnectOptions, DqlitePool, DqlitePoolOptions};

const ACCOUNTS: i64 = 1_000;
const ACCOUNT_START_BALANCE: i64 = 1_000;
const BULK_ROWS: usize = 1_000;
const SCAN_TABLE_ROWS: i64 = 20_000;
const SCAN_ROWS: i64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    KvWrite,
    KvReadWrite,
    Bank,
    Bulk,
    Scan,
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kvwrite" => Workload::KvWrite,
            "kvreadwrite" => Workload::KvReadWrite,
            "bank" => Workload::Bank,
            "bulk" => Workload::Bulk,
            "scan" => Workload::Scan,
            _ => return Err(format!("unknown workload {s:?} (kvwrite, kvreadwrite, bank, bulk, scan)")),
        })
    }
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::KvWrite => "kvwrite",
            Workload::KvReadWrite => "kvreadwrite",
            Workload::Bank => "bank",
            Workload::Bulk => "bulk",
            Workload::Scan => "scan",
        }
    }
}

#[derive(Debug)]
struct Args {
    url: Option<String>,
    launch: Option<String>,
    nodes: usize,
    sqlite: Option<String>,
    workload: Workload,
    workers: usize,
    duration: Duration,
    json: bool,
    label: Option<String>,
    seed: u64,
    /// `--read leader|linearizable`: the driver's read mode (dqlite targets).
    read: Option<sqlx_dqlite::ReadMode>,
}

const USAGE: &str = "usage: workload_bench (--url URL | --launch NAME [--nodes N] | --sqlite FILE)
             [--workload kvwrite|kvreadwrite|bank|bulk|scan] [--workers W] [--duration SECS]
             [--seed S] [--label TEXT] [--json] [--read leader|linearizable]";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: None,
        launch: None,
        nodes: 3,
        sqlite: None,
        workload: Workload::KvWrite,
        workers: 1,
        duration: Duration::from_secs(10),
        json: false,
        label: None,
        seed: 1,
        read: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--url" => a.url = Some(value()?),
            "--launch" => a.launch = Some(value()?),
            "--nodes" => a.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--sqlite" => a.sqlite = Some(value()?),
            "--workload" | "-w" => a.workload = value()?.parse()?,
            "--workers" => a.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--duration" | "-d" => {
                a.duration = Duration::from_secs_f64(value()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--seed" => a.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--label" => a.label = Some(value()?),
            "--json" => a.json = true,
            "--read" => {
                a.read = Some(match value()?.as_str() {
                    "leader" => sqlx_dqlite::ReadMode::Leader,
                    "linearizable" => sqlx_dqlite::ReadMode::Linearizable,
                    other => return Err(format!("--read: {other:?} is not leader or linearizable")),
                })
            }
            "--help" | "-h" => return Err(USAGE.to_owned()),
            _ => return Err(format!("unknown argument {flag:?}\n{USAGE}")),
        }
    }
    let targets = [a.url.is_some(), a.launch.is_some(), a.sqlite.is_some()].iter().filter(|t| **t).count();
    if targets != 1 {
        return Err(format!("choose exactly one of --url, --launch, --sqlite\n{USAGE}"));
    }
    if a.workers == 0 {
        return Err("--workers must be at least 1".to_owned());
    }
    Ok(a)
}

/// A small deterministic PRNG (xorshift64*), so runs are reproducible from `--seed`.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn letter(&mut self) -> char {
        (b'a' + self.below(26) as u8) as char
    }
    fn key(&mut self) -> String {
        (0..32).map(|_| self.letter()).collect()
    }
    fn value(&mut self) -> String {
        let c = self.letter();
        let mut s: String = std::iter::repeat_n(c, 512).collect();
        s.extend((0..512).map(|_| self.letter()));
        s
    }
}

/// The database behind the benchmark: our driver, or sqlx-sqlite as the baseline.
#[derive(Clone)]
enum Target {
    Dqlite(DqlitePool),
    Sqlite(SqlitePool),
}

/// Runs the same sqlx code on whichever pool the target holds.
macro_rules! on_pool {
    ($target:expr, $pool:ident => $body:expr) => {
        match $target {
            Target::Dqlite($pool) => $body,
            Target::Sqlite($pool) => $body,
        }
    };
}

type BoxError = Box<dyn Error + Send + Sync>;

impl Target {
    async fn setup(&self, workload: Workload) -> Result<(), BoxError> {
        on_pool!(self, pool => {
            match workload {
                Workload::KvWrite | Workload::KvReadWrite => {
                    sqlx::query("CREATE TABLE IF NOT EXISTS model (key TEXT PRIMARY KEY, value TEXT)").execute(pool).await?;
                }
                Workload::Bank => {
                    sqlx::query("DROP TABLE IF EXISTS accounts").execute(pool).await?;
                    sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)").execute(pool).await?;
                    let mut tx = pool.begin().await?;
                    for id in 0..ACCOUNTS {
                        sqlx::query("INSERT INTO accounts (id, balance) VALUES (?, ?)").bind(id).bind(ACCOUNT_START_BALANCE).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
                Workload::Bulk => {
                    sqlx::query("CREATE TABLE IF NOT EXISTS bulk (id INTEGER PRIMARY KEY, worker INTEGER, n INTEGER, payload TEXT)").execute(pool).await?;
                }
                Workload::Scan => {
                    sqlx::query("DROP TABLE IF EXISTS scan").execute(pool).await?;
                    sqlx::query("CREATE TABLE scan (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)").execute(pool).await?;
                    let mut tx = pool.begin().await?;
                    for id in 0..SCAN_TABLE_ROWS {
                        sqlx::query("INSERT INTO scan (id, payload) VALUES (?, ?)").bind(id).bind(format!("row-{id:08}")).execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
            }
            Ok(())
        })
    }

    async fn kv_write(&self, key: &str, value: &str) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            sqlx::query("INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)").bind(key).bind(value).execute(pool).await.map(drop)
        })
    }

    async fn kv_read(&self, key: &str) -> Result<(), sqlx::Error> {
        let found: Option<String> = on_pool!(self, pool => {
            sqlx::query_scalar("SELECT value FROM model WHERE key = ?").bind(key).fetch_optional(pool).await?
        });
        match found {
            Some(v) if v.len() == 1024 => Ok(()),
            other => Err(sqlx::Error::Protocol(format!("read of {key}: unexpected {:?}", other.map(|v| v.len())))),
        }
    }

    /// Moves `amount` from one account to another if the first can pay. The first statement
    /// writes, so the transaction takes the write lock at once (a transaction that reads first
    /// and then writes can fail with SQLITE_BUSY_SNAPSHOT on SQLite whatever the busy timeout).
    async fn bank_transfer(&self, from: i64, to: i64, amount: i64) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let paid = sqlx::query("UPDATE accounts SET balance = balance - ? WHERE id = ? AND balance >= ?")
                .bind(amount).bind(from).bind(amount).execute(&mut *tx).await?.rows_affected();
            if paid == 1 {
                sqlx::query("UPDATE accounts SET balance = balance + ? WHERE id = ?").bind(amount).bind(to).execute(&mut *tx).await?;
            }
            let _: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = ?").bind(to).fetch_one(&mut *tx).await?;
            tx.commit().await
        })
    }

    async fn bank_total(&self) -> Result<(i64, i64), sqlx::Error> {
        on_pool!(self, pool => {
            let row = sqlx::query("SELECT COUNT(*), SUM(balance) FROM accounts").fetch_one(pool).await?;
            Ok((row.try_get(0)?, row.try_get(1)?))
        })
    }

    async fn bulk_insert(&self, worker: i64, n: i64, payload: &str) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for _ in 0..BULK_ROWS {
                sqlx::query("INSERT INTO bulk (worker, n, payload) VALUES (?, ?, ?)").bind(worker).bind(n).bind(payload).execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    async fn scan(&self, from: i64) -> Result<(), sqlx::Error> {
        let rows = on_pool!(self, pool => {
            sqlx::query("SELECT id, payload FROM scan WHERE id >= ? AND id < ? ORDER BY id").bind(from).bind(from + SCAN_ROWS).fetch_all(pool).await?.len()
        });
        if rows as i64 == SCAN_ROWS {
            Ok(())
        } else {
            Err(sqlx::Error::Protocol(format!("scan from {from}: {rows} rows, expected {SCAN_ROWS}")))
        }
    }

    async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// Latencies and errors of one operation kind.
#[derive(Default)]
struct KindStats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_errors: BTreeMap<String, u64>,
}

impl KindStats {
    fn record(&mut self, started: Instant, result: Result<(), sqlx::Error>) {
        match result {
            Ok(()) => self.latencies_us.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(e) => {
                self.errors += 1;
                let mut msg = e.to_string();
                msg.truncate(120);
                if self.first_errors.len() < 8 || self.first_errors.contains_key(&msg) {
                    *self.first_errors.entry(msg).or_default() += 1;
                }
            }
        }
    }

    fn merge(&mut self, other: KindStats) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        for (k, v) in other.first_errors {
            *self.first_errors.entry(k).or_default() += v;
        }
    }
}

#[derive(Default)]
struct WorkerStats {
    kinds: BTreeMap<&'static str, KindStats>,
}

impl WorkerStats {
    fn kind(&mut self, name: &'static str) -> &mut KindStats {
        self.kinds.entry(name).or_default()
    }
}

async fn worker(
    target: Target,
    workload: Workload,
    id: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> WorkerStats {
    let mut rng = Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut stats = WorkerStats::default();
    let mut written: Vec<String> = Vec::new();
    let mut n = 0i64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match workload {
            Workload::KvWrite => {
                let (k, v) = (rng.key(), rng.value());
                let r = target.kv_write(&k, &v).await;
                stats.kind("write").record(started, r);
            }
            Workload::KvReadWrite => {
                if written.is_empty() || rng.below(2) == 0 {
                    let (k, v) = (rng.key(), rng.value());
                    let r = target.kv_write(&k, &v).await;
                    if r.is_ok() {
                        written.push(k);
                    }
                    stats.kind("write").record(started, r);
                } else {
                    let k = &written[rng.below(written.len() as u64) as usize];
                    let r = target.kv_read(k).await;
                    stats.kind("read").record(started, r);
                }
            }
            Workload::Bank => {
                let from = rng.below(ACCOUNTS as u64) as i64;
                let to = (from + 1 + rng.below(ACCOUNTS as u64 - 1) as i64) % ACCOUNTS;
                let r = target.bank_transfer(from, to, 1 + rng.below(10) as i64).await;
                stats.kind("transfer").record(started, r);
            }
            Workload::Bulk => {
                let payload: String = (0..64).map(|_| rng.letter()).collect();
                let r = target.bulk_insert(id as i64, n, &payload).await;
                stats.kind("bulk1000").record(started, r);
            }
            Workload::Scan => {
                let from = rng.below((SCAN_TABLE_ROWS - SCAN_ROWS) as u64) as i64;
                let r = target.scan(from).await;
                stats.kind("scan10000").record(started, r);
            }
        }
        n += 1;
        done.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 * p) as usize).min(sorted_us.len() - 1);
    sorted_us[i] as f64 / 1000.0
}

async fn connect(args: &Args) -> Result<(Target, String, Option<dqlite::testing::Cluster>), BoxError> {
    let pool_size = args.workers as u32 + 1;
    if let Some(path) = &args.sqlite {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(pool_size).connect_with(opts).await?;
        return Ok((Target::Sqlite(pool), format!("sqlx-sqlite file={path} WAL synchronous=FULL"), None));
    }
    let (url, cluster) = match (&args.url, &args.launch) {
        (Some(url), _) => (url.clone(), None),
        (None, Some(name)) => {
            let launcher = dqlite::testing::launcher_by_name(name)?;
            let nodes = args.nodes;
            let cluster = tokio::task::spawn_blocking(move || launcher.start(nodes)).await??;
            (cluster.url("bench.db"), Some(cluster))
        }
        (None, None) => unreachable!("parse_args checked the target"),
    };
    let mut opts = DqliteConnectOptions::from_str(&url)?;
    if let Some(mode) = args.read {
        opts = opts.read_mode(mode);
    }
    let pool = DqlitePoolOptions::new().max_connections(pool_size).connect_with(opts).await?;
    Ok((Target::Dqlite(pool), url, cluster))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            std::process::exit(2);
        }
    };
    let (target, what, cluster) = connect(&args).await?;
    let label = args.label.clone().unwrap_or_else(|| what.clone());
    eprintln!(
        "bench: {} workers={} duration={:?} seed={} target: {what}",
        args.workload.name(),
        args.workers,
        args.duration,
        args.seed
    );
    target.setup(args.workload).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut handles = Vec::new();
    for id in 0..args.workers {
        handles.push(tokio::spawn(worker(
            target.clone(),
            args.workload,
            id,
            args.seed,
            Arc::clone(&stop),
            Arc::clone(&done),
        )));
    }
    let progress_done = Arc::clone(&done);
    let deadline = started + args.duration;
    let mut last = 0u64;
    while Instant::now() < deadline {
        let wait = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        let now = progress_done.load(Ordering::Relaxed);
        eprintln!("[{:5.1}s] {} ops/s (total {now})", started.elapsed().as_secs_f64(), now - last);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = WorkerStats::default();
    for h in handles {
        let w = h.await?;
        for (k, s) in w.kinds {
            total.kind(k).merge(s);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    let result = Arc::new(Mutex::new(Vec::<String>::new()));
    for (kind, stats) in &mut total.kinds {
        stats.latencies_us.sort_unstable();
        let ok = stats.latencies_us.len();
        let (p50, p99) = (percentile_ms(&stats.latencies_us, 0.50), percentile_ms(&stats.latencies_us, 0.99));
        let line = format!(
            "{label} | {} workers={} {kind}: n={ok} ops/s={:.0} p50={p50:.3}ms p99={p99:.3}ms errors={}",
            args.workload.name(),
            args.workers,
            ok as f64 / elapsed,
            stats.errors
        );
        println!("{line}");
        for (msg, count) in &stats.first_errors {
            println!("    {count} x {msg}");
        }
        if args.json {
            println!(
                "{{\"label\":{:?},\"workload\":{:?},\"workers\":{},\"kind\":{:?},\"n\":{ok},\"ops_per_s\":{:.1},\"p50_ms\":{p50:.4},\"p99_ms\":{p99:.4},\"errors\":{}}}",
                label,
                args.workload.name(),
                args.workers,
                kind,
                ok as f64 / elapsed,
                stats.errors
            );
        }
        result.lock().map_err(|_| "poisoned")?.push(line);
    }
    if args.workload == Workload::Bank {
        let (count, sum) = target.bank_total().await?;
        let expected = ACCOUNTS * ACCOUNT_START_BALANCE;
        println!("bank check: {count} accounts, total {sum} (expected {expected})");
        if sum != expected || count != ACCOUNTS {
            target.close().await;
            return Err(format!("bank invariant broken: total {sum}, expected {expected}").into());
        }
    }
    target.close().await;
    drop(cluster);
    Ok(())
}
