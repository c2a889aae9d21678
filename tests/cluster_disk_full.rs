//! Disk full over the network: a `dqlited run` node whose data directory is on a small tmpfs
//! (mounted by this test, unmounted after). With the disk filled, a client's write fails with
//! SQLITE_FULL (13) and nothing of it is applied, reads keep working, and once space returns
//! writes succeed again, through the same pool.
//!
//! Needs root (or CAP_SYS_ADMIN) for `mount -t tmpfs`: without it the test fails loudly, it is
//! not skipped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Executor;
use sqlx_dqlite::DqlitePoolOptions;

const BOUND: Duration = Duration::from_secs(60);
/// The tmpfs: room for the node's prepared log segments and a small database, little more.
const TMPFS_BYTES: u64 = 64 << 20;

/// A tmpfs mounted for the test; unmounted (lazily, so a crashed node cannot keep it) on drop.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(bytes: u64) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("dqlite-rs-diskfull-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run mount: {e}"));
        assert!(
            out.status.success(),
            "this test needs to mount a tmpfs (root or CAP_SYS_ADMIN): `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

struct Node {
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(address: SocketAddr, data: &Path, log: &Path) -> Node {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_dqlited"))
        .args(["run", "--address", &address.to_string(), "--data"])
        .arg(data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    Node { child: Some(child), log: log.to_owned() }
}

/// Fills the file system holding `dir` to the last byte with `filler` (ENOSPC stops it).
fn fill(filler: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(filler).unwrap();
    let chunk = vec![0xa5u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    // Smaller writes take the last partial chunk.
    let one = [0u8; 512];
    while f.write(&one).map(|n| n > 0).unwrap_or(false) {}
    let _ = f.sync_all();
}

fn libc_enospc() -> i32 {
    28
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_sqlite_full_keeps_reads_and_recovers() {
    let fs = Tmpfs::mount(TMPFS_BYTES);
    let address = TcpListener::bind(("127.0.0.9", 0)).unwrap().local_addr().unwrap();
    let node = spawn(
        address,
        &fs.dir.join("node"),
        &std::env::temp_dir().join(format!("diskfull-{}.log", std::process::id())),
    );
    let url = format!("dqlite://{address}/full.db?leader_timeout=60s");
    let deadline = Instant::now() + BOUND;
    let pool = loop {
        match DqlitePoolOptions::new().max_connections(2).connect(&url).await {
            Ok(p) => break p,
            Err(e) => {
                assert!(Instant::now() < deadline, "node never served: {e}\n{}", node.log());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL)").await.unwrap();
    for id in 1..=20i64 {
        sqlx::query("INSERT INTO t VALUES (?, randomblob(2000))").bind(id).execute(&pool).await.unwrap();
    }

    let filler = fs.dir.join("filler");
    fill(&filler);

    // Writes fail with SQLITE_FULL, bounded; keep writing until one says so (the first may
    // still fit in a prepared log segment or the WAL's tail).
    let mut full_seen = None;
    let mut acked = Vec::new();
    for id in 100..400i64 {
        match sqlx::query("INSERT INTO t VALUES (?, randomblob(60000))").bind(id).execute(&pool).await {
            Ok(_) => acked.push(id),
            Err(e) => {
                let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
                assert_eq!(code.as_deref(), Some("13"), "a write on a full disk fails with SQLITE_FULL: {e:?}");
                full_seen = Some(id);
                break;
            }
        }
    }
    let failed = full_seen.unwrap_or_else(|| panic!("no write failed with the disk full\n{}", node.log()));
    eprintln!("disk full after {} more writes; write {failed} got SQLITE_FULL", acked.len());

    // Reads keep working and show exactly the acknowledged rows (the failed one is not there).
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM t ORDER BY id").fetch_all(&pool).await.unwrap();
    let mut want: Vec<i64> = (1..=20).collect();
    want.extend(&acked);
    assert_eq!(ids, want, "reads on a full disk");

    // Space returns: writes succeed again (bounded retry: the node notices on its next try).
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + BOUND;
    loop {
        match sqlx::query("INSERT INTO t VALUES (?, randomblob(100))").bind(failed).execute(&pool).await {
            Ok(_) => break,
            Err(e) => {
                assert!(Instant::now() < deadline, "writes never recovered: {e:?}\n{}", node.log());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&pool).await.unwrap();
    assert_eq!(n as usize, 20 + acked.len() + 1);
    pool.close().await;
    drop(node);
    drop(fs);
}
