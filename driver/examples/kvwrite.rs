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
//! Both are measured on a formed cluster: ours starts once node 1 reports three voters; of
//! go-dqlite's run (which starts as soon as all nodes answer, some still spares, and is given
//! 4 s more) only the operations started after that moment count.
//! Prints ops/s (successful), p50, p99 and errors for each (and this process's CPU time per
//! operation for ours), the ratio ours / go-dqlite of the summed ops over all rounds, and the
//! per-round ratios with their geometric mean.
//!
//! `KVWRITE_CLUSTER=HOST:PORT,HOST:PORT,...` runs only this driver's side, against a cluster
//! started by hand (for strace/perf of the client alone). `KVWRITE_UNPREPARED=1` sends the SQL
//! text with every request (EXEC_SQL, as go-dqlite's client does) instead of preparing once.

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
    /// CPU time this process spent per successful operation (ours only).
    cpu_us_per_op: Option<f64>,
    /// Printed after the numbers.
    note: String,
}

/// CPU time of all threads of this process so far, in ns (`/proc/self/task/*/schedstat`).
fn process_cpu_ns() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += text.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

impl Stats {
    fn from_latencies(mut ms: Vec<f64>, secs: f64, errors: u64) -> Stats {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64) * q) as usize).copied().unwrap_or(f64::NAN);
        Stats {
            ops: ms.len(),
            secs,
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            errors,
            cpu_us_per_op: None,
            note: String::new(),
        }
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn line(&self, who: &str, workers: usize) -> String {
        let cpu = self.cpu_us_per_op.map(|c| format!(" client-cpu={c:.0}us/op")).unwrap_or_default();
        format!(
            "{who:<22} workers={workers}: ops/s={:>6.0} p50={:.3}ms p99={:.3}ms errors={}{cpu}{}",
            self.ops_per_sec(),
            self.p50_ms,
            self.p99_ms,
            self.errors,
            self.note
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

/// Extra seconds go-dqlite's driver node runs beyond `secs`: its workload starts as soon as all
/// nodes answer (some still spares), and only what it measures once the cluster has three
/// voters is counted, as for ours.
const GO_SETTLE_SECS: u64 = 4;

/// How many voters node `addr` reports (a CLUSTER request in format 1 over a fresh socket).
fn voters(addr: &str) -> Result<usize, Box<dyn std::error::Error>> {
    use dqlite_wire::{DecodeContext, Header, NodeInfoFormat, ProtocolVersion, Request, Response, Role};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = ProtocolVersion::V1.encode().to_vec();
    Request::Cluster { format: NodeInfoFormat::V1 }.encode(&mut out)?;
    s.write_all(&out)?;
    let mut head = [0u8; dqlite_wire::HEADER_LEN];
    s.read_exact(&mut head)?;
    let header = Header::decode(&head)?;
    let mut body = vec![0u8; usize::try_from(header.body_bytes())?];
    s.read_exact(&mut body)?;
    let ctx = DecodeContext { version: ProtocolVersion::V1, node_info_format: NodeInfoFormat::V1 };
    Ok(match Response::decode(&header, &body, &ctx)? {
        Response::Servers { nodes, .. } => nodes.iter().filter(|n| n.role == Some(Role::Voter)).count(),
        _ => 0,
    })
}

/// Wait (bounded) until node `addr` reports `n` voters; the wall-clock time it did, in Unix ns.
fn wait_voters(addr: &str, n: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    while voters(addr).map_or(true, |v| v < n) {
        assert!(Instant::now() < deadline, "the cluster at {addr} never had {n} voters");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// go-dqlite's numbers: run the driver node to its end, then read its result files, keeping
/// what it measured once the cluster had three voters.
fn go_client(secs: u64, workers: usize, round: usize) -> Stats {
    let mut cluster = start(&format!("go-{workers}-{round}"), Some((secs + GO_SETTLE_SECS, workers)));
    let formed = wait_voters(&cluster.addrs[0], 3);
    let deadline = Instant::now() + Duration::from_secs(secs + 180);
    loop {
        if let Some(status) = cluster.procs[0].try_wait().expect("wait driver") {
            assert!(status.success(), "dqlite-benchmark driver failed: {status}");
            break;
        }
        assert!(Instant::now() < deadline, "dqlite-benchmark driver did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    read_results(&cluster.dir.join("n1"), formed)
}

/// go-dqlite's measurements that started at or after `since` (Unix ns).
fn read_results(dir: &Path, since: u64) -> Stats {
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
    let (mut early, mut e0) = (0usize, u64::MAX);
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
                    if ts < since {
                        early += 1;
                        e0 = e0.min(ts);
                        continue;
                    }
                    t0 = t0.min(ts);
                    t1 = t1.max(ts);
                    ms.push(v);
                }
            }
        }
    }
    let secs = (t1.saturating_sub(t0)) as f64 / 1e9;
    let mut stats = Stats::from_latencies(ms, secs, errors);
    if early > 0 {
        stats.note = format!(" (not counted: {early} ops in the {:.1} s before 3 voters)", (since - e0) as f64 / 1e9);
    }
    stats
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
    let addr = cluster.addrs[0].clone();
    tokio::task::spawn_blocking(move || wait_voters(&addr, 3)).await.expect("wait voters");
    let stats = ours_on(&cluster.addrs, secs, workers, round).await;
    drop(cluster);
    stats
}

/// The workload through a pool against the cluster at `addrs` (the first is dialled first).
async fn ours_on(addrs: &[String], secs: u64, workers: usize, round: usize) -> Stats {
    let url = format!("dqlite://{}/benchmark.db?peers={}&leader_timeout=60s", addrs[0], addrs[1..].join(","));
    let pool: DqlitePool = DqlitePoolOptions::new()
        .max_connections(workers as u32)
        .min_connections(workers as u32)
        .acquire_timeout(Duration::from_secs(60))
        .connect(&url)
        .await
        .expect("pool");
    pool.execute("CREATE TABLE IF NOT EXISTS model (key TEXT PRIMARY KEY, value TEXT)").await.expect("table");
    let cpu0 = process_cpu_ns();
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let pool = Arc::new(pool);
    let mut tasks = Vec::new();
    // KVWRITE_UNPREPARED=1: EXEC_SQL with the SQL text every time (as go-dqlite's client
    // does) instead of EXEC of the statement prepared once per connection.
    let prepared = std::env::var_os("KVWRITE_UNPREPARED").is_none();
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
                    .persistent(prepared)
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
    let cpu_ns = process_cpu_ns().saturating_sub(cpu0);
    pool.close().await;
    let mut stats = Stats::from_latencies(ms, secs, errors);
    stats.cpu_us_per_op = (stats.ops > 0).then(|| cpu_ns as f64 / 1e3 / stats.ops as f64);
    stats
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
    if let Ok(cluster) = std::env::var("KVWRITE_CLUSTER") {
        // Profiling aid: only this driver, against a cluster started by hand.
        let addrs: Vec<String> = cluster.split(',').map(str::to_owned).collect();
        for &w in &workers {
            for round in 0..rounds {
                println!("{}", ours_on(&addrs, secs, w, round).await.line("sqlx-dqlite pool", w));
            }
        }
        return;
    }
    for &w in &workers {
        let (mut our_ops, mut our_secs, mut go_ops, mut go_secs) = (0, 0.0, 0, 0.0);
        let mut ratios = Vec::new();
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
            ratios.push(a.ops_per_sec() / b.ops_per_sec());
            our_ops += a.ops;
            our_secs += a.secs;
            go_ops += b.ops;
            go_secs += b.secs;
        }
        let ratio = (our_ops as f64 / our_secs) / (go_ops as f64 / go_secs);
        let geo = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
        let list = ratios.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(" ");
        println!(
            "kvwrite workers={w}: sqlx-dqlite / go-dqlite ops/s ratio = {ratio:.2}x ({rounds} rounds of {secs} s; \
             per round {list}; geometric mean {geo:.2}x)"
        );
    }
}
