//! kvwrite through `DqlitePool` vs go-dqlite's own client, side by side in one run.
//!
//! ```text
//! cargo run --release -p sqlx-dqlite --example kvwrite [-- SECONDS [WORKERS,WORKERS,...] [ROUNDS]]
//! ```
//!
//! Defaults: 10 s, workers 1 and 8, 2 rounds. For each worker count and round it starts a
//! fresh 3-node cluster of Debian's `dqlite-benchmark` (C dqlite 1.11 in go-dqlite's app) on
//! loopback twice: once with `--driver` on the first node (go-dqlite's client runs BENCH.md's
//! kvwrite workload), once without, for this driver's pool to run the same workload against
//! (`INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)`, key 32 random letters, value 512
//! copies of one random letter then 512 random letters, one statement per autocommit
//! transaction, N workers for D seconds). The two alternate, so noise hits both alike.
//! Prints ops/s (successful), p50, p99 and errors for each, and the ratio ours / go-dqlite of
//! the summed ops over all rounds.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx_core::executor::Executor;
use sqlx_core::query::query;
use sqlx_dqlite::{DqlitePool, DqlitePoolOptions};

/// Stats of one run.
struct Stats {
    ops: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

impl Stats {
    fn from_latencies(mut ms: Vec<f64>, secs: f64, errors: u64) -> Stats {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64) * q) as usize).copied().unwrap_or(f64::NAN);
        Stats { ops: ms.len(), secs, p50_ms: at(0.5), p99_ms: at(0.99), errors }
    }

    fn line(&self, who: &str, workers: usize) -> String {
        format!(
            "{who:<22} workers={workers}: ops/s={:>6.0} p50={:.3}ms p99={:.3}ms errors={}",
            self.ops as f64 / self.secs,
            self.p50_ms,
            self.p99_ms,
            self.errors
        )
    }
}

struct Cluster {
    procs: Vec<Child>,
    dir: PathBuf,
    addrs: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Start 3 `dqlite-benchmark` nodes; with `driver = Some((seconds, workers))` node 1 runs
/// go-dqlite's kvwrite workload.
fn start(tag: &str, driver: Option<(u64, usize)>) -> Cluster {
    let dir = std::env::temp_dir().join(format!("kvwrite-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut procs = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let d = dir.join(format!("n{}", i + 1));
        std::fs::create_dir_all(&d).expect("node dir");
        let mut cmd = Command::new("dqlite-benchmark");
        cmd.args(["-d", addr, "-D"]).arg(&d);
        if i == 0 {
            if let Some((secs, workers)) = driver {
                cmd.args(["--driver", "--cluster", &addrs.join(","), "--duration", &secs.to_string()]);
                cmd.args(["--workers", &workers.to_string(), "-w", "kvwrite"]);
            }
        } else {
            cmd.args(["--join", &addrs[0]]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dqlite-benchmark (apt-get install go-dqlite)");
        procs.push(child);
        if i == 0 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    Cluster { procs, dir, addrs }
}

/// go-dqlite's numbers: run the driver node to its end, then read its result files.
fn go_client(secs: u64, workers: usize, round: usize) -> Stats {
    let mut cluster = start(&format!("go-{workers}-{round}"), Some((secs, workers)));
    let deadline = Instant::now() + Duration::from_secs(secs + 180);
    loop {
        if let Some(status) = cluster.procs[0].try_wait().expect("wait driver") {
            assert!(status.success(), "dqlite-benchmark driver failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "dqlite-benchmark driver did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    read_results(&cluster.dir.join("n1"))
}

fn read_results(dir: &Path) -> Stats {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().contains("-exec-") {
                files.push(p);
            }
        }
    }
    assert!(!files.is_empty(), "no dqlite-benchmark results under {}", dir.display());
    let (mut ms, mut errors, mut t0, mut t1) = (Vec::new(), 0, u64::MAX, 0);
    for f in files {
        let text = std::fs::read_to_string(&f).expect("result file");
        let mut measurements = false;
        for line in text.lines() {
            if let Some(n) = line.strip_prefix("n_err ") {
                errors += n.trim().parse::<u64>().unwrap_or(0);
            }
            if line.starts_with("measurements") {
                measurements = true;
                continue;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if measurements && cols.len() == 2 {
                if let (Ok(ts), Ok(v)) = (cols[0].parse::<u64>(), cols[1].parse::<f64>()) {
                    t0 = t0.min(ts);
                    t1 = t1.max(ts);
                    ms.push(v);
                }
            }
        }
    }
    let secs = (t1.saturating_sub(t0)) as f64 / 1e9;
    Stats::from_latencies(ms, secs, errors)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn letter(&mut self) -> char {
        (b'a' + (self.next() % 26) as u8) as char
    }

    fn letters(&mut self, n: usize) -> String {
        (0..n).map(|_| self.letter()).collect()
    }
}

/// Our numbers: the same workload through one pool with `workers` connections.
async fn ours(secs: u64, workers: usize, round: usize) -> Stats {
    let cluster = start(&format!("ours-{workers}-{round}"), None);
    let url =
        format!("dqlite://{}/benchmark.db?peers={}&leader_timeout=60s", cluster.addrs[0], cluster.addrs[1..].join(","));
    let pool: DqlitePool = DqlitePoolOptions::new()
        .max_connections(workers as u32)
        .min_connections(workers as u32)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&url)
        .await
        .expect("pool");
    pool.execute("CREATE TABLE IF NOT EXISTS model (key TEXT PRIMARY KEY, value TEXT)").await.expect("table");
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let pool = Arc::new(pool);
    let mut tasks = Vec::new();
    for w in 0..workers {
        let pool = Arc::clone(&pool);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) << 32) ^ (round as u64));
            let (mut ms, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < end {
                let key = rng.letters(32);
                let mut value = std::iter::repeat_n(rng.letter(), 512).collect::<String>();
                value.push_str(&rng.letters(512));
                let t = Instant::now();
                match query("INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)")
                    .bind(key)
                    .bind(value)
                    .execute(&*pool)
                    .await
                {
                    Ok(_) => ms.push(t.elapsed().as_secs_f64() * 1e3),
                    Err(_) => errors += 1,
                }
            }
            (ms, errors)
        }));
    }
    let (mut ms, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (m, e) = t.await.expect("worker");
        ms.extend(m);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    pool.close().await;
    drop(cluster);
    Stats::from_latencies(ms, secs, errors)
}

fn main() {
    // KVWRITE_RUNTIME=current runs the client on tokio's single-threaded runtime (no hand-offs
    // between worker threads); the default is the multi-threaded one most applications use.
    let mut rt = if std::env::var("KVWRITE_RUNTIME").as_deref() == Ok("current") {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    rt.enable_all().build().expect("tokio runtime").block_on(run());
}

async fn run() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let workers: Vec<usize> =
        args.next().map(|a| a.split(',').filter_map(|w| w.parse().ok()).collect()).unwrap_or_else(|| vec![1, 8]);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    for &w in &workers {
        let (mut our_ops, mut our_secs, mut go_ops, mut go_secs) = (0, 0.0, 0, 0.0);
        for round in 0..rounds {
            // Alternate who goes first.
            let (a, b) = if round % 2 == 0 {
                let a = ours(secs, w, round).await;
                (a, tokio::task::spawn_blocking(move || go_client(secs, w, round)).await.expect("go"))
            } else {
                let b = tokio::task::spawn_blocking(move || go_client(secs, w, round)).await.expect("go");
                (ours(secs, w, round).await, b)
            };
            println!("{}", a.line("sqlx-dqlite pool", w));
            println!("{}", b.line("go-dqlite client", w));
            our_ops += a.ops;
            our_secs += a.secs;
            go_ops += b.ops;
            go_secs += b.secs;
        }
        let ratio = (our_ops as f64 / our_secs) / (go_ops as f64 / go_secs);
        println!(
            "kvwrite workers={w}: sqlx-dqlite / go-dqlite ops/s ratio = {ratio:.2}x ({rounds} rounds of {secs} s)"
        );
    }
}
