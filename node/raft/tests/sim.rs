//! Deterministic whole-cluster simulation of the Raft core (see `dqlite_raft::sim`).
//!
//! * `cargo test -p dqlite-raft --test sim` runs the default seeds (a short run for CI) on a
//!   range that moves with the commit: the base is derived from `git rev-parse HEAD` (or
//!   `GITHUB_SHA`) and printed, so each commit explores fresh seeds and a failure names its seed.
//! * `SIM_SEEDS=N` runs `N` seeds; `SIM_SEED_BASE=B` starts at `B` (0 for the fixed range).
//! * `SIM_SEED=S` replays exactly one seed; `SIM_TRACE=1` prints its whole trace.
//! * `SIM_THREADS=T` spreads seeds over T threads (default: available parallelism).
//! * `SIM_LIN_STEPS=K` sets the linearizability search budget per seed (default: 300,000 in
//!   debug builds, 5,000,000 in optimized ones).
//!
//! A failing seed prints itself first, then what broke, the tail of its trace, and the command
//! that replays it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use dqlite_raft::sim::{run_seed, trace_seed, Failure, Options, Report};

/// Seeds in the default run: sized to stay well under a minute in a debug build.
const DEFAULT_SEEDS: u64 = 300;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not an unsigned integer"),
    }
}

/// Options for one seed, with the environment's overrides.
fn options(seed: u64) -> Options {
    let mut o = Options::new(seed);
    if let Some(k) = env_u64("SIM_LIN_STEPS") {
        o.lin_steps_max = k;
    }
    o
}

fn report_failure(f: &Failure) -> String {
    let tail_len = if std::env::var_os("SIM_TRACE").is_some() { usize::MAX } else { 300 };
    let skip = f.trace.len().saturating_sub(tail_len);
    let mut out = format!("\n==== SIM FAILED: seed {} ====\n{f}", f.seed);
    out.push_str(&format!("---- trace ({} events, last {} shown) ----\n", f.trace.len(), f.trace.len() - skip));
    for line in &f.trace[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "==== replay: SIM_SEED={} cargo test -p dqlite-raft --test sim -- --nocapture  (SIM_TRACE=1 for the whole trace) ====\n",
        f.seed
    ));
    out
}

#[derive(Default, Debug)]
struct Totals {
    seeds: u64,
    ops: u64,
    ops_ok: u64,
    ops_unknown: u64,
    lin_unknown: u64,
    elections: u64,
    crashes: u64,
    pauses: u64,
    churned: u64,
    partitions: u64,
    conf_changes: u64,
    transfers: u64,
    snapshots_taken: u64,
    snapshots_installed: u64,
    live_snapshots: u64,
    fsync_tails: u64,
    fsync_failures: u64,
    read_errors: u64,
    corruptions: u64,
    wipes: u64,
    rejoined: u64,
    messages: u64,
    dropped: u64,
    duplicated: u64,
    liveness_ms_max: u64,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.seeds += 1;
        self.ops += r.ops as u64;
        self.ops_ok += r.ops_ok;
        self.ops_unknown += r.ops_unknown as u64;
        self.lin_unknown += u64::from(r.lin_unknown);
        self.elections += r.elections;
        self.crashes += r.crashes;
        self.pauses += r.pauses;
        self.churned += r.churned;
        self.partitions += r.partitions;
        self.conf_changes += r.conf_changes;
        self.transfers += r.transfers;
        self.snapshots_taken += r.snapshots_taken;
        self.snapshots_installed += r.snapshots_installed;
        self.live_snapshots += r.live_snapshots;
        self.fsync_tails += r.fsync_tails;
        self.fsync_failures += r.fsync_failures;
        self.read_errors += r.read_errors;
        self.corruptions += r.corruptions;
        self.wipes += r.wipes;
        self.rejoined += r.rejoined;
        self.messages += r.net.sent;
        self.dropped += r.net.dropped;
        self.duplicated += r.net.duplicated;
        self.liveness_ms_max = self.liveness_ms_max.max(r.liveness_ms);
    }
}

/// A seed base that moves with the commit: the first 12 hex digits of the commit id, scaled to
/// a multiple of 1,000 below 10^12 (so ranges of different commits rarely overlap). Falls back
/// to 0 outside a git checkout.
fn commit_seed_base() -> (u64, String) {
    let sha = std::env::var("GITHUB_SHA").ok().or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    match sha.as_deref().and_then(|s| u64::from_str_radix(s.get(..12)?, 16).ok()) {
        Some(x) => {
            ((x % 1_000_000_000) * 1_000, format!("commit {}", sha.as_deref().unwrap_or("").get(..12).unwrap_or("")))
        }
        None => (0, "no commit id found".to_owned()),
    }
}

#[test]
fn simulated_clusters_stay_safe_live_and_linearizable() {
    if let Some(seed) = env_u64("SIM_SEED") {
        eprintln!("SIM replaying seed {seed}");
        let opts = Options { trace: std::env::var_os("SIM_TRACE").is_some(), ..options(seed) };
        match run_seed(opts) {
            Ok(r) => {
                if std::env::var_os("SIM_TRACE").is_some() {
                    // A passing traced run: show its trace anyway.
                    let (_, trace) = trace_seed(options(seed));
                    for line in trace {
                        eprintln!("{line}");
                    }
                }
                eprintln!("seed {seed} passed: {r:#?}");
            }
            Err(f) => panic!("{}", report_failure(&f)),
        }
        return;
    }
    let n = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let base = env_u64("SIM_SEED_BASE").unwrap_or_else(|| {
        let (base, from) = commit_seed_base();
        eprintln!("SIM_SEED_BASE={base} (derived from {from}; set SIM_SEED_BASE to choose)");
        base
    });
    let threads = env_u64("SIM_THREADS")
        .map(|t| t.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |p| p.get()));
    let next = AtomicU64::new(base);
    let stop = AtomicBool::new(false);
    let totals = Mutex::new(Totals::default());
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= base + n {
                    return;
                }
                match run_seed(options(seed)) {
                    Ok(r) => {
                        if r.lin_unknown {
                            eprintln!(
                                "SIM seed {seed}: linearizability unknown after {} steps ({} ops, {} unknown outcome)",
                                r.lin_steps, r.ops, r.ops_unknown
                            );
                        }
                        totals.lock().expect("totals lock").add(&r)
                    }
                    Err(f) => {
                        eprintln!("SIM seed {seed} FAILED");
                        stop.store(true, Ordering::Relaxed);
                        failures.lock().expect("failures lock").push(f);
                    }
                }
            });
        }
    });
    let totals = totals.into_inner().expect("totals lock");
    let mut failures = failures.into_inner().expect("failures lock");
    failures.sort_by_key(|f| f.seed);
    if let Some(f) = failures.first() {
        panic!("{}", report_failure(f));
    }
    eprintln!(
        "SIM {} seeds (SIM_SEED_BASE={base} SIM_SEEDS={n}: {base}..{}) passed in {:.1?} on {threads} threads: {totals:#?}",
        totals.seeds,
        base + n,
        started.elapsed()
    );
    // The run must really have exercised the faults, or passing proves little.
    if n >= 50 {
        assert!(totals.crashes > 0, "no crash happened");
        assert!(totals.partitions > 0, "no partition happened");
        assert!(totals.conf_changes > 0, "no membership change happened");
        assert!(totals.transfers > 0, "no leadership transfer happened");
        assert!(totals.snapshots_installed > 0, "no snapshot was installed");
        assert!(totals.dropped > 0 && totals.duplicated > 0, "no message loss or duplication");
        assert!(totals.fsync_tails > 0 && totals.fsync_failures > 0 && totals.read_errors > 0, "{totals:?}");
        assert!(totals.corruptions > 0 && totals.wipes > 0 && totals.rejoined > 0, "{totals:?}");
        assert!(totals.live_snapshots > 0, "{totals:?}");
        assert!(totals.ops_ok > 0 && totals.ops_unknown > 0, "{totals:?}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 7] {
        let a = run_seed(Options::new(seed)).map_err(|f| report_failure(&f));
        let b = run_seed(Options::new(seed)).map_err(|f| report_failure(&f));
        let (a, b) = (a.unwrap_or_else(|e| panic!("{e}")), b.unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
}
