//! Interop: Debian's real `dqlite` shell (go-dqlite 1.11.5, package `go-dqlite`) against our
//! server with the rusqlite test backend: `.cluster`, `.leader`, `CREATE TABLE`, `INSERT`,
//! `SELECT`, output checked. A missing `dqlite` binary fails the test (it is not skipped).

mod server_support;

use std::process::Command;
use std::time::Duration;

use server_support::TestServer;

fn dqlite_binary() -> String {
    let path = std::env::var("DQLITE_SHELL").unwrap_or_else(|_| "/usr/bin/dqlite".into());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} not found: this test needs Debian's dqlite shell; install it with \
         `apt-get install -y go-dqlite` (or point DQLITE_SHELL at a dqlite shell binary)"
    );
    path
}

/// Runs one shell command against `addr`, bounded in time; returns stdout.
async fn shell(addr: &str, db: &str, command: &str) -> String {
    let bin = dqlite_binary();
    let (addr, db, cmd) = (addr.to_owned(), db.to_owned(), command.to_owned());
    let run = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .args(["-s", &addr, &db, &cmd])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dqlite");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(_status) = child.try_wait().expect("wait") {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dqlite shell did not finish {cmd:?} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("output")
    });
    let out = run.await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "dqlite {command:?} failed ({}):\n{stdout}\n{stderr}", out.status);
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_dqlite_shell_talks_to_our_server() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();

    let cluster = shell(&addr, "shell.db", ".cluster").await;
    eprintln!(".cluster:\n{cluster}");
    assert_eq!(cluster.trim(), format!("1|{addr}|voter"));

    let leader = shell(&addr, "shell.db", ".leader").await;
    eprintln!(".leader:\n{leader}");
    assert_eq!(leader.trim(), addr);

    shell(&addr, "shell.db", "CREATE TABLE fruit (id INTEGER PRIMARY KEY, name TEXT, weight REAL)").await;
    shell(&addr, "shell.db", "INSERT INTO fruit (name, weight) VALUES ('apple', 1.5), ('pear', 2.25)").await;
    let rows = shell(&addr, "shell.db", "SELECT id, name, weight FROM fruit ORDER BY id").await;
    eprintln!("SELECT:\n{rows}");
    let lines: Vec<&str> = rows.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines, ["1|apple|1.5", "2|pear|2.25"], "{rows}");
    // The write really happened in the database file.
    let conn = rusqlite::Connection::open(s.dir.path().join("shell.db")).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM fruit", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2);
}
