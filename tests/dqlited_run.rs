//! `dqlited run` as real processes on 127.0.0.x: `--help`, nodes started in any order form a
//! cluster (bootstrap + `--join`), Debian's real `dqlite` shell works against it, SIGTERM on
//! the leader hands leadership over and exits 0, a restart with the same `--data` resumes, and
//! every stopped node's database opens in stock `sqlite3` with `integrity_check` ok and the
//! same content (including `random()` values) on all three.
//!
//! Needs `/usr/bin/dqlite` and `/usr/bin/sqlite3` (packages `go-dqlite`, `sqlite3`): missing
//! ones fail the test, they are not skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BOUND: Duration = Duration::from_secs(60);

fn dqlited() -> &'static str {
    env!("CARGO_BIN_EXE_dqlited")
}

fn free_addr(ip: [u8; 4]) -> SocketAddr {
    TcpListener::bind((std::net::Ipv4Addr::from(ip), 0)).unwrap().local_addr().unwrap()
}

fn tool(path: &str, package: &str) -> String {
    assert!(Path::new(path).exists(), "{path} not found: install it with `apt-get install -y {package}`");
    path.to_owned()
}

struct Proc {
    child: Option<Child>,
    address: SocketAddr,
    log: PathBuf,
}

impl Proc {
    fn spawn(address: SocketAddr, data: &Path, join: &[SocketAddr]) -> Proc {
        Self::spawn_with(address, data, join, &[])
    }

    fn spawn_with(address: SocketAddr, data: &Path, join: &[SocketAddr], extra: &[&str]) -> Proc {
        let log = data.with_extension("log");
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = Command::new(dqlited());
        cmd.args(["run", "--address", &address.to_string(), "--data"]).arg(data);
        if !join.is_empty() {
            let list: Vec<String> = join.iter().map(ToString::to_string).collect();
            cmd.args(["--join", &list.join(",")]);
        }
        cmd.args(extra);
        cmd.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(out);
        Proc { child: Some(cmd.spawn().unwrap()), address, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status within the bound.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("running");
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + BOUND;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "node did not exit after SIGTERM:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the real dqlite shell once, bounded.
fn shell(servers: &[SocketAddr], db: &str, command: &str) -> String {
    let bin = tool("/usr/bin/dqlite", "go-dqlite");
    let list: Vec<String> = servers.iter().map(ToString::to_string).collect();
    let mut child = Command::new(bin)
        .args(["-s", &list.join(","), db, command])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dqlite shell did not finish {command:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "dqlite {command:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, procs: &[&Proc], mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + BOUND;
    while !f() {
        if Instant::now() >= deadline {
            let logs: Vec<String> = procs.iter().map(|p| format!("--- {} ---\n{}", p.address, p.log())).collect();
            panic!("timed out waiting for {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sqlite3(db: &Path, sql: &str) -> String {
    let bin = tool("/usr/bin/sqlite3", "sqlite3");
    let out = Command::new(bin).arg(db).arg(sql).output().unwrap();
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn help_on_every_subcommand() {
    for args in [&["--help"][..], &["run", "--help"], &["migrate", "--help"], &["database", "--help"]] {
        let out = Command::new(dqlited()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = Command::new(dqlited()).args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--address", "--data", "--join", "RUST_LOG", "SIGTERM"] {
        assert!(text.contains(flag), "run --help lacks {flag}: {text}");
    }
    // A missing required flag is a usage error, not a start.
    let out = Command::new(dqlited()).args(["run", "--data", "/nonexistent"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn three_processes_form_a_cluster_survive_sigterm_and_agree_on_disk() {
    let root = tempfile::tempdir().unwrap();
    let addrs = [free_addr([127, 0, 0, 2]), free_addr([127, 0, 0, 3]), free_addr([127, 0, 0, 4])];
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("n{i}"))).collect();
    // Any order: node 2 first (its seeds are not up yet), then the bootstrapper, then node 1.
    let mut procs = [
        Proc::spawn(addrs[2], &dirs[2], &[addrs[0], addrs[1]]),
        Proc::spawn(addrs[0], &dirs[0], &[]),
        Proc::spawn(addrs[1], &dirs[1], &[addrs[2]]),
    ];
    procs.swap(0, 1); // procs[i] is node i
    procs.swap(1, 2);
    {
        let refs: Vec<&Proc> = procs.iter().collect();
        wait_until("three voters", &refs, || {
            let out = shell(&addrs, "app.db", ".cluster");
            out.lines().filter(|l| l.ends_with("|voter")).count() == 3
        });
    }
    // The real dqlite shell against our cluster.
    let cluster = shell(&addrs, "app.db", ".cluster");
    for a in &addrs {
        assert!(cluster.contains(&format!("|{a}|voter")), "{cluster}");
    }
    let leader = shell(&addrs, "app.db", ".leader").trim().to_owned();
    assert!(addrs.iter().any(|a| a.to_string() == leader), "{leader}");
    shell(&addrs, "app.db", "CREATE TABLE t (id INTEGER PRIMARY KEY, r INTEGER, name TEXT)");
    for i in 0..20 {
        shell(&addrs, "app.db", &format!("INSERT INTO t (r, name) VALUES (random(), 'n{i}')"));
    }
    let rows = shell(&addrs, "app.db", "SELECT count(*), min(name) FROM t");
    assert_eq!(rows.trim(), "20|n0");

    // SIGTERM the leader: it hands leadership over and exits 0.
    let li = addrs.iter().position(|a| a.to_string() == leader).unwrap();
    let status = procs[li].terminate();
    assert!(status.success(), "exit status {status:?}:\n{}", procs[li].log());
    let others: Vec<SocketAddr> = addrs.iter().enumerate().filter(|(i, _)| *i != li).map(|(_, a)| *a).collect();
    {
        let refs: Vec<&Proc> = procs.iter().collect();
        wait_until("a new leader", &refs, || {
            let l = shell(&others, "app.db", ".leader");
            others.iter().any(|a| a.to_string() == l.trim())
        });
    }
    shell(&others, "app.db", "INSERT INTO t (r, name) VALUES (random(), 'after')");

    // Restart it with the same data: same id, resumes as a member.
    let id_before = std::fs::read_to_string(dirs[li].join("node-id")).unwrap();
    procs[li] = Proc::spawn(addrs[li], &dirs[li], &[]);
    {
        let refs: Vec<&Proc> = procs.iter().collect();
        wait_until("the restarted node to know the leader", &refs, || {
            shell(&[addrs[li]], "app.db", ".leader").trim() != ""
        });
    }
    assert_eq!(std::fs::read_to_string(dirs[li].join("node-id")).unwrap(), id_before);
    let rows = shell(&addrs, "app.db", "SELECT count(*) FROM t");
    assert_eq!(rows.trim(), "21");
    {
        // The restarted node catches up (read its file with stock sqlite3 while it runs).
        let refs: Vec<&Proc> = procs.iter().collect();
        let db = dirs[li].join("db").join("app.db");
        wait_until("the restarted node's file to hold every row", &refs, || {
            let out = Command::new("/usr/bin/sqlite3").arg(&db).arg("SELECT count(*) FROM t").output();
            matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "21")
        });
    }
    for p in procs.iter_mut() {
        let status = p.terminate();
        assert!(status.success(), "exit status {status:?}:\n{}", p.log());
    }
    let mut contents = Vec::new();
    for d in &dirs {
        let db = d.join("db").join("app.db");
        assert_eq!(sqlite3(&db, "PRAGMA integrity_check"), "ok", "{}", db.display());
        contents.push(sqlite3(&db, "SELECT id, r, name FROM t ORDER BY id"));
    }
    assert_eq!(contents[0].lines().count(), 21, "{}", contents[0]);
    assert_eq!(contents[0], contents[1]);
    assert_eq!(contents[0], contents[2]);
}

/// `dqlited run --page-size N`: the databases the node creates use that page size (read back
/// from the stopped node's file with stock sqlite3).
#[test]
fn run_page_size_reaches_new_databases() {
    let root = tempfile::tempdir().unwrap();
    let addr = free_addr([127, 0, 0, 5]);
    let dir = root.path().join("n0");
    let mut p = Proc::spawn_with(addr, &dir, &[], &["--page-size", "8192"]);
    wait_until("a leader", &[&p], || shell(&[addr], "ps.db", ".leader").trim() == addr.to_string());
    shell(&[addr], "ps.db", "CREATE TABLE t (x BLOB)");
    shell(&[addr], "ps.db", "INSERT INTO t VALUES (randomblob(20000))");
    let status = p.terminate();
    assert!(status.success(), "exit status {status:?}:\n{}", p.log());
    assert_eq!(sqlite3(&dir.join("db").join("ps.db"), "PRAGMA page_size"), "8192");
}
