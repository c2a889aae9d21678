//! Turns the results of `tools/bench.sh` (one JSON object per line) into the results section of
//! `docs/BENCHMARKS.md` (tables with ratios, the command, machine facts, the issue-11 targets)
//! and a PNG chart of throughput and p99 per workload.
//!
//! ```text
//! bench-report --results target/bench/results.jsonl --doc docs/BENCHMARKS.md \
//!     --chart docs/benchmarks.png --command 'tools/bench.sh' --secs 10
//! ```
//!
//! Input lines (written by the script): `{"label": TARGET, "workload", "workers", "kind", "n",
//! "ops_per_s", "p50_ms", "p99_ms", "errors"}` (workload_bench's `--json` line, `label` being
//! the target key: `own`, `real`, `go`, `sqlite`) and `{"rss": TARGET, "workload", "workers",
//! "peak_mib"}` (the largest node's peak resident set during that run). The chart's text uses
//! DejaVu Sans from the system (`fonts-dejavu-core`) or the TTF file named by `BENCH_FONT`.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

type BoxError = Box<dyn Error>;

/// The targets in table and chart order: (key, name).
const TARGETS: [(&str, &str); 4] = [
    ("own", "dqlite-rs, 3 nodes (sqlx-dqlite)"),
    ("real", "dqlite 1.11, 3 nodes (sqlx-dqlite)"),
    ("go", "dqlite 1.11, 3 nodes (go-dqlite client)"),
    ("sqlite", "sqlx-sqlite, local file, WAL, FULL"),
];
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
const WORKLOADS: [&str; 5] = ["kvwrite", "kvreadwrite", "bank", "bulk", "scan"];
const BEGIN: &str = "<!-- bench-results:begin (written by tools/bench.sh; edits inside are overwritten) -->";
const END: &str = "<!-- bench-results:end -->";

#[derive(Clone, Debug)]
struct Sample {
    ops: f64,
    p50: f64,
    p99: f64,
    errors: u64,
}

/// (workload, kind, workers) → target → sample.
type Results = BTreeMap<(usize, String, u64), BTreeMap<&'static str, Sample>>;
/// (workload, workers) → the largest node's peak RSS in MiB.
type Rss = BTreeMap<(usize, u64), f64>;

/// The measurements outside the matrix (`BENCH_EXTRAS`), the last of each kind.
#[derive(Debug, Default, Clone, PartialEq)]
struct Extras {
    /// Point selects per second: (embedded leader in process, sqlx-sqlite on a file).
    embedded: Option<(f64, f64)>,
    /// Median write unavailability after a leader SIGKILL, ms: (ours, real dqlite).
    failover: Option<(f64, f64)>,
}

struct Args {
    results: PathBuf,
    doc: PathBuf,
    chart: PathBuf,
    command: String,
    secs: String,
    profile: String,
    /// How many times the script ran the whole matrix (each cell is the median of its rounds).
    rounds: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut results = None;
    let mut doc = None;
    let mut chart = None;
    let mut command = None;
    let mut secs = None;
    let mut profile = None;
    let mut rounds = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--results" => results = Some(PathBuf::from(value)),
            "--doc" => doc = Some(PathBuf::from(value)),
            "--chart" => chart = Some(PathBuf::from(value)),
            "--command" => command = Some(value),
            "--secs" => secs = Some(value),
            "--profile" => profile = Some(value),
            "--rounds" => rounds = Some(value.parse::<u32>().map_err(|e| format!("--rounds {value:?}: {e}"))?),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(Args {
        results: results.ok_or("--results is required")?,
        doc: doc.ok_or("--doc is required")?,
        chart: chart.ok_or("--chart is required")?,
        command: command.ok_or("--command is required")?,
        secs: secs.unwrap_or_else(|| "?".to_owned()),
        profile: profile.unwrap_or_else(|| "release".to_owned()),
        rounds: rounds.unwrap_or(1).max(1),
    })
}

fn target_key(label: &str) -> Option<&'static str> {
    TARGETS.iter().map(|(k, _)| *k).find(|k| *k == label)
}

fn workload_rank(w: &str) -> usize {
    WORKLOADS.iter().position(|x| *x == w).unwrap_or(WORKLOADS.len())
}

/// Parses the results file: the samples and the node RSS peaks `(workload rank, workers) → MiB`.
fn read_results(path: &Path) -> Result<(Results, Rss, Extras), BoxError> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rounds: BTreeMap<(usize, String, u64), BTreeMap<&'static str, Vec<Sample>>> = BTreeMap::new();
    let mut rss = BTreeMap::new();
    let mut extras = Extras::default();
    for (no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), no + 1))?;
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let need = |k: &str| f(k).ok_or_else(|| format!("line {}: no {k}", no + 1));
        match s("extra").as_deref() {
            Some("embedded") => {
                extras.embedded = Some((need("embedded_ops")?, need("sqlite_ops")?));
                continue;
            }
            Some("failover") => {
                extras.failover = Some((need("own_ms")?, need("real_ms")?));
                continue;
            }
            Some(other) => return Err(format!("line {}: unknown extra {other:?}", no + 1).into()),
            None => {}
        }
        let workload = s("workload").ok_or_else(|| format!("line {}: no workload", no + 1))?;
        let workers = v.get("workers").and_then(Value::as_u64).ok_or_else(|| format!("line {}: no workers", no + 1))?;
        if v.get("rss").is_some() {
            let mib = f("peak_mib").ok_or_else(|| format!("line {}: no peak_mib", no + 1))?;
            let e = rss.entry((workload_rank(&workload), workers)).or_insert(0.0f64);
            *e = e.max(mib);
            continue;
        }
        let label = s("label").ok_or_else(|| format!("line {}: no label", no + 1))?;
        let Some(target) = target_key(&label) else {
            return Err(format!("line {}: unknown target {label:?}", no + 1).into());
        };
        let sample = Sample {
            ops: f("ops_per_s").unwrap_or(0.0),
            p50: f("p50_ms").unwrap_or(f64::NAN),
            p99: f("p99_ms").unwrap_or(f64::NAN),
            errors: v.get("errors").and_then(Value::as_u64).unwrap_or(0),
        };
        let kind = s("kind").unwrap_or_else(|| "op".to_owned());
        rounds.entry((workload_rank(&workload), kind, workers)).or_default().entry(target).or_default().push(sample);
    }
    let results = rounds
        .into_iter()
        .map(|(cell, by)| (cell, by.into_iter().map(|(t, samples)| (t, median(samples))).collect()))
        .collect();
    Ok((results, rss, extras))
}

/// One cell's rounds as one sample: the round with the median ops/s (the lower of the two middle
/// ones for an even count), with the errors of all rounds summed (a target of zero errors must
/// hold in every round).
fn median(mut samples: Vec<Sample>) -> Sample {
    let errors = samples.iter().map(|s| s.errors).sum();
    samples.sort_by(|a, b| a.ops.total_cmp(&b.ops));
    let mut m = samples.swap_remove((samples.len() - 1) / 2);
    m.errors = errors;
    m
}

fn workload_name(rank: usize) -> &'static str {
    WORKLOADS.get(rank).copied().unwrap_or("other")
}

fn cmd_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `nproc`, CPU model, memory, kernel, and the disk under the current directory.
fn machine_facts() -> Vec<(String, String)> {
    let mut facts = Vec::new();
    let nproc = cmd_output("nproc", &[]).unwrap_or_else(|| "?".to_owned());
    facts.push(("nproc".to_owned(), nproc));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "?".to_owned());
    facts.push(("CPU".to_owned(), model));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kb) = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
    {
        facts.push(("memory".to_owned(), format!("{:.1} GiB", kb / 1024.0 / 1024.0)));
    }
    facts.push(("kernel".to_owned(), cmd_output("uname", &["-sr"]).unwrap_or_else(|| "?".to_owned())));
    if let Some(df) = cmd_output("df", &["-hT", "."]) {
        if let Some(row) = df.lines().nth(1) {
            let cols: Vec<&str> = row.split_whitespace().collect();
            if cols.len() >= 3 {
                let dev = cols[0];
                let base = dev.trim_start_matches("/dev/");
                let rot = std::fs::read_to_string(format!("/sys/block/{base}/queue/rotational"))
                    .ok()
                    .map(|r| if r.trim() == "0" { ", non-rotational" } else { ", rotational" })
                    .unwrap_or("");
                let model = cmd_output("lsblk", &["-dno", "MODEL", dev]).filter(|m| !m.is_empty());
                let model = model.map(|m| format!(", model {m}")).unwrap_or_default();
                facts.push(("disk".to_owned(), format!("{dev} ({}, {} total{rot}{model})", cols[1], cols[2])));
            }
        }
    }
    if let Some(load) = std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| {
        let v: Vec<&str> = l.split_whitespace().take(3).collect();
        (v.len() == 3).then(|| v.join(" "))
    }) {
        facts.push(("load average at the end (1/5/15 min)".to_owned(), load));
    }
    facts
}

fn fmt_ops(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn fmt_ms(x: f64) -> String {
    if x.is_nan() {
        "–".to_owned()
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ratio(a: Option<&Sample>, b: Option<&Sample>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.ops > 0.0 => format!("{:.2}×", a.ops / b.ops),
        _ => "–".to_owned(),
    }
}

/// The real-dqlite 1-worker reference for a workload/kind: go-dqlite's client where it runs the
/// workload, else our driver against real dqlite.
fn dqlite_1w<'a>(results: &'a Results, rank: usize, kind: &str) -> Option<(&'a Sample, &'static str)> {
    let r = results.get(&(rank, kind.to_owned(), 1))?;
    r.get("go").map(|s| (s, "go")).or_else(|| r.get("real").map(|s| (s, "real")))
}

fn check(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "not met"
    }
}

fn targets_section(results: &Results, rss: &Rss, extras: &Extras) -> String {
    let mut out = String::new();
    let get =
        |w: &str, k: &str, n: u64, t: &str| results.get(&(workload_rank(w), k.to_owned(), n)).and_then(|r| r.get(t));
    let _ = writeln!(out, "| target (issue 11) | measured | |");
    let _ = writeln!(out, "|---|---|---|");
    if let (Some(own), Some((base, _))) = (get("kvwrite", "write", 1, "own"), dqlite_1w(results, 0, "write")) {
        let r = own.ops / base.ops;
        let ok = r >= 4.0 && own.p99 <= base.p99;
        let _ = writeln!(
            out,
            "| kvwrite, 1 worker: ≥ 4× dqlite's ops/s, p99 no worse | {r:.2}×, p99 {} ms vs {} ms | {} |",
            fmt_ms(own.p99),
            fmt_ms(base.p99),
            check(ok)
        );
    }
    if let (Some(own), Some((base, _))) = (get("kvwrite", "write", 32, "own"), dqlite_1w(results, 0, "write")) {
        let r = own.ops / base.ops;
        let _ = writeln!(
            out,
            "| kvwrite, 32 workers: ≥ 15× dqlite's 1-worker ops/s, zero errors | {r:.2}×, {} errors | {} |",
            own.errors,
            check(r >= 15.0 && own.errors == 0)
        );
    }
    if let (Some(own), Some((base, _))) = (get("bank", "transfer", 8, "own"), dqlite_1w(results, 0, "write")) {
        let r = own.ops / base.ops;
        let _ = writeln!(
            out,
            "| bank, 8 workers: zero errors, ≥ 2× dqlite's 1-worker kvwrite | {r:.2}×, {} errors | {} |",
            own.errors,
            check(r >= 2.0 && own.errors == 0)
        );
    }
    if let (Some(own), Some((base, _))) = (get("kvreadwrite", "read", 1, "own"), dqlite_1w(results, 1, "read")) {
        let r = own.ops / base.ops;
        let _ = writeln!(
            out,
            "| kvreadwrite reads over the wire, 1 worker: ≥ 1.5× dqlite | {r:.2}× | {} |",
            check(r >= 1.5)
        );
    }
    if let Some(mib) = rss.get(&(0, 32)) {
        let _ = writeln!(
            out,
            "| node RSS under the 32-worker kvwrite load < 200 MiB | {mib:.0} MiB (largest node's peak) | {} |",
            check(*mib < 200.0)
        );
    }
    out.push_str(&extras_rows(extras));
    out
}

/// The targets rows of the measurements outside the matrix.
fn extras_rows(extras: &Extras) -> String {
    let mut out = String::new();
    if let Some((embedded, sqlite)) = extras.embedded {
        let r = if sqlite > 0.0 { embedded / sqlite } else { 0.0 };
        let _ = writeln!(
            out,
            "| in-process reads on an embedded leader: ≥ 0.7× sqlx-sqlite's point selects (1 client, best of 3 rounds) | {r:.2}× ({} vs {} ops/s) | {} |",
            fmt_ops(embedded),
            fmt_ops(sqlite),
            check(r >= 0.7)
        );
    }
    if let Some((own, real)) = extras.failover {
        let _ = writeln!(
            out,
            "| write unavailability after a leader SIGKILL: < 2 s median | {own:.0} ms (real dqlite {real:.0} ms) | {} |",
            check(own < 2000.0)
        );
    }
    out
}

fn section(args: &Args, results: &Results, rss: &Rss, extras: &Extras) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "## Side by side: dqlite-rs, real dqlite, sqlx-sqlite (`tools/bench.sh`)\n");
    let _ = writeln!(
        out,
        "One run of `tools/bench.sh` on one machine, every target in the same sitting, {} s per \
         measurement; each cluster is 3 nodes on loopback started for that measurement \
         (workload_bench `--launch own|real`; go-dqlite's `dqlite-benchmark` through \
         `../shared/tools/dqlite-anchor.sh`, which has only kvwrite and kvreadwrite). Ratios are of \
         ops/s; \"dqlite 1w\" is real dqlite with 1 worker on the same workload (go-dqlite's client \
         where it has the workload, else sqlx-dqlite). Shared, noisy machine: compare ratios, not \
         absolute numbers from other days.\n",
        args.secs
    );
    if args.rounds > 1 {
        let _ = writeln!(
            out,
            "The script ran the whole matrix {} times in a row; each cell below is the round with the \
             median ops/s of that cell (its p50 and p99 with it), errors are summed over the rounds, \
             node RSS is the largest of any round; the raw rounds are in `target/bench/results.jsonl`.\n",
            args.rounds
        );
    }
    if args.profile != "release" {
        let _ = writeln!(
            out,
            "**Smoke run:** `workload_bench` and `dqlited` were built in the `{}` profile (no \
             optimisation), so these numbers say nothing about a release build's speed: this run \
             shows that the script works. The full run is \
             `tools/bench.sh` (release build, 10 s per measurement) on a quiet machine.\n",
            args.profile
        );
    }
    let _ = writeln!(out, "Reproduce:\n\n```text\n{}\n```\n", args.command);
    let _ = writeln!(out, "Machine:\n");
    for (k, v) in machine_facts() {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let _ = writeln!(out, "\n![throughput and p99 per workload](benchmarks.png)\n");
    let _ = writeln!(out, "### Targets\n");
    out.push_str(&targets_section(results, rss, extras));
    let _ = writeln!(out, "\n### Ratios (dqlite-rs ops/s over each)\n");
    let _ = writeln!(
        out,
        "| workload | kind | workers | dqlite-rs ops/s | × dqlite 1w | × sqlx-dqlite→dqlite | × go-dqlite→dqlite | × sqlx-sqlite | p99 dqlite-rs / dqlite (same client) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for ((rank, kind, workers), by) in results {
        let own = by.get("own");
        let base = dqlite_1w(results, *rank, kind).map(|(s, _)| s);
        let p99 = match (own, by.get("real")) {
            (Some(o), Some(r)) if r.p99 > 0.0 => format!("{:.2}", o.p99 / r.p99),
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {kind} | {workers} | {} | {} | {} | {} | {} | {p99} |",
            workload_name(*rank),
            own.map(|s| fmt_ops(s.ops)).unwrap_or_else(|| "–".to_owned()),
            ratio(own, base),
            ratio(own, by.get("real")),
            ratio(own, by.get("go")),
            ratio(own, by.get("sqlite")),
        );
    }
    let _ = writeln!(out, "\n### All measurements\n");
    let _ = writeln!(out, "| workload | kind | workers | target | ops/s | p50 ms | p99 ms | errors | node RSS peak |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for ((rank, kind, workers), by) in results {
        for (key, name) in TARGETS {
            let Some(s) = by.get(key) else { continue };
            let mem = if key == "own" {
                rss.get(&(*rank, *workers)).map(|m| format!("{m:.0} MiB")).unwrap_or_else(|| "–".to_owned())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {kind} | {workers} | {name} | {} | {} | {} | {} | {mem} |",
                workload_name(*rank),
                fmt_ops(s.ops),
                fmt_ms(s.p50),
                fmt_ms(s.p99),
                s.errors
            );
        }
    }
    let _ = writeln!(
        out,
        "\nErrors are failed operations (for real dqlite with several workers mostly \"database is \
         locked\"); a failed operation has no latency sample. Node RSS: the largest `VmHWM` of the \
         three `dqlited` processes, sampled by the script during the run."
    );
    let _ = writeln!(out, "{END}");
    out
}

/// Replaces the marked section of the document, or appends it.
fn write_doc(path: &Path, section: &str) -> Result<(), BoxError> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!("{}{}{}", &old[..b], section.trim_end(), &old[e + END.len()..]),
        _ => format!("{}\n{}", old.trim_end_matches('\n').to_owned() + "\n", section),
    };
    std::fs::write(path, new).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

fn load_font() -> Result<(), BoxError> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("BENCH_FONT").map(PathBuf::from).into_iter().collect();
    candidates.extend(
        [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        ]
        .iter()
        .map(PathBuf::from),
    );
    for path in &candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
            return Ok(());
        }
    }
    Err(format!(
        "no font for the chart: install fonts-dejavu-core or point BENCH_FONT at a .ttf file (tried {candidates:?})"
    )
    .into())
}

fn draw_chart(path: &Path, results: &Results) -> Result<(), BoxError> {
    load_font()?;
    // One row per workload and kind, two panels: ops/s and p99.
    let mut rows: Vec<(usize, String)> = results.keys().map(|(r, k, _)| (*r, k.clone())).collect();
    rows.dedup();
    let workers: Vec<u64> = {
        let mut w: Vec<u64> = results.keys().map(|(_, _, w)| *w).collect();
        w.sort_unstable();
        w.dedup();
        w
    };
    if rows.is_empty() || workers.is_empty() {
        return Err("no results to chart".into());
    }
    let present: Vec<usize> =
        (0..TARGETS.len()).filter(|&i| results.values().any(|by| by.contains_key(TARGETS[i].0))).collect();
    let (width, row_h, legend_h) = (1400u32, 300u32, 70u32);
    let height = legend_h + row_h * rows.len() as u32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (legend, body) = root.split_vertically(legend_h);
    // Legend.
    for (slot, &i) in present.iter().enumerate() {
        let x = 20 + slot as i32 * 340;
        legend.draw(&Rectangle::new([(x, 25), (x + 22, 45)], COLORS[i].filled()))?;
        legend.draw(&Text::new(TARGETS[i].1, (x + 30, 27), ("sans-serif", 16).into_font()))?;
    }
    let panels = body.split_evenly((rows.len(), 2));
    for (row, (rank, kind)) in rows.iter().enumerate() {
        for col in 0..2 {
            let area = &panels[row * 2 + col];
            let value = |s: &Sample| if col == 0 { s.ops } else { s.p99 };
            let mut max = 0.0f64;
            for w in &workers {
                if let Some(by) = results.get(&(*rank, kind.clone(), *w)) {
                    for s in by.values() {
                        if value(s).is_finite() {
                            max = max.max(value(s));
                        }
                    }
                }
            }
            let max = if max > 0.0 { max * 1.15 } else { 1.0 };
            let title = format!(
                "{} ({kind}): {}",
                workload_name(*rank),
                if col == 0 { "throughput, ops/s (higher is better)" } else { "p99 latency, ms (lower is better)" }
            );
            let mut chart = ChartBuilder::on(area)
                .caption(title, ("sans-serif", 18).into_font())
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(-0.5f64..(workers.len() as f64 - 0.5), 0f64..max)?;
            let labels = workers.clone();
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(workers.len() * 2 + 1)
                .x_label_formatter(&|x| {
                    let i = x.round();
                    if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                        format!("W = {}", labels[i as usize])
                    } else {
                        String::new()
                    }
                })
                .y_label_formatter(&|y| if col == 0 { format!("{y:.0}") } else { fmt_ms(*y) })
                .label_style(("sans-serif", 14).into_font())
                .draw()?;
            let bar_w = 0.8 / present.len() as f64;
            for (g, w) in workers.iter().enumerate() {
                let Some(by) = results.get(&(*rank, kind.clone(), *w)) else { continue };
                for (slot, &i) in present.iter().enumerate() {
                    let Some(s) = by.get(TARGETS[i].0) else { continue };
                    let v = value(s);
                    if !v.is_finite() {
                        continue;
                    }
                    let x0 = g as f64 - 0.4 + slot as f64 * bar_w;
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(x0 + 0.01, 0.0), (x0 + bar_w - 0.01, v)],
                        COLORS[i].filled(),
                    )))?;
                }
            }
        }
    }
    root.present()?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("bench-report: {msg}\nusage: bench-report --results FILE --doc FILE --chart FILE --command TEXT [--secs N] [--profile P] [--rounds N]");
            std::process::exit(2);
        }
    };
    let (results, rss, extras) = read_results(&args.results)?;
    if results.is_empty() {
        return Err(format!("{}: no results", args.results.display()).into());
    }
    draw_chart(&args.chart, &results)?;
    write_doc(&args.doc, &section(&args, &results, &rss, &extras))?;
    eprintln!("bench-report: wrote {} and {}", args.doc.display(), args.chart.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ops: f64, errors: u64) -> Sample {
        Sample { ops, p50: ops / 1000.0, p99: ops / 100.0, errors }
    }

    #[test]
    fn the_median_round_keeps_its_latencies_and_sums_the_errors() {
        let m = median(vec![sample(300.0, 1), sample(100.0, 0), sample(200.0, 2)]);
        assert_eq!((m.ops, m.p50, m.p99, m.errors), (200.0, 0.2, 2.0, 3));
        // Even count: the lower of the two middle rounds (not flattering).
        let m = median(vec![sample(400.0, 0), sample(100.0, 0), sample(300.0, 0), sample(200.0, 0)]);
        assert_eq!(m.ops, 200.0);
        let m = median(vec![sample(5.0, 7)]);
        assert_eq!((m.ops, m.errors), (5.0, 7));
    }

    #[test]
    fn extras_are_read_and_judged() {
        let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"label":"own","workload":"kvwrite","workers":1,"kind":"write","n":10,"ops_per_s":100.0,"p50_ms":1.0,"p99_ms":2.0,"errors":0}"#,
                "\n",
                r#"{"extra":"embedded","sqlite_ops":1000.0,"embedded_ops":650.0}"#,
                "\n",
                r#"{"extra":"failover","own_ms":1604.0,"real_ms":6678.0}"#,
                "\n"
            ),
        )
        .unwrap();
        let (results, _, extras) = read_results(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(results.len(), 1);
        assert_eq!(extras, Extras { embedded: Some((650.0, 1000.0)), failover: Some((1604.0, 6678.0)) });
        let rows = extras_rows(&extras);
        // 0.65x is under 0.7x: not met; 1.6 s is under 2 s: met.
        assert!(rows.contains("0.65× (650 vs 1000 ops/s) | not met"), "{rows}");
        assert!(rows.contains("1604 ms (real dqlite 6678 ms) | **met**"), "{rows}");
        let fast = extras_rows(&Extras { embedded: Some((900.0, 1000.0)), failover: Some((2500.0, 6000.0)) });
        assert!(
            fast.contains("0.90× (900 vs 1000 ops/s) | **met**")
                && fast.contains("2500 ms (real dqlite 6000 ms) | not met"),
            "{fast}"
        );
    }
}
