//! [`RealDqlite`]: clusters of Canonical's C dqlite 1.11, run as Debian's `dqlite-demo`
//! processes (package `go-dqlite`) on 127.0.0.x.
//!
//! `dqlite-demo --api API --db DB -D DIR [--join DB0]` runs one node: `DB` is the dqlite
//! address (client protocol and Raft), `API` an HTTP demo endpoint we do not use. A joining
//! node is added as a spare and go-dqlite's `app` package promotes it to voter by itself
//! (about 2 s for a 3-node cluster on an idle machine); the launcher waits for that through the
//! wire protocol's CLUSTER request.
//!
//! Each node runs under a tiny supervising `sh` whose standard input is a pipe from the test
//! process: one line `keep` on it means "SIGKILL the node, keep its data" ([`NodeProcess::kill`]),
//! end-of-file means "SIGKILL the node and delete its data". End-of-file also happens when the
//! test process dies for any reason, so no node outlives its test, even one kept in a `static`.

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{probe, Cluster, LaunchError, Launcher, NodeProcess, Role, POLL_INTERVAL, PROBE_TIMEOUT};

/// Environment variable overriding the `dqlite-demo` path.
pub const DEMO_BIN_ENV: &str = "DQLITE_DEMO_BIN";
const DEFAULT_DEMO_BIN: &str = "/usr/bin/dqlite-demo";

/// Supervisor: `sh -c SCRIPT supervisor LOG DIR BINARY ARGS...`. Prints the node's pid, then
/// waits for a line (or EOF) on stdin. `kill -9` + `wait` means the node is gone (and its
/// port closed) when the supervisor exits. The line `term` sends SIGTERM instead, waits, writes
/// the node's exit status to `LOG.exit` and keeps the data.
pub(super) const SUPERVISOR: &str = r#"log=$1; dir=$2; shift 2
"$@" </dev/null >>"$log" 2>&1 &
pid=$!
echo "$pid"
read -r cmd
if [ "$cmd" = term ]; then
  kill -TERM "$pid" 2>/dev/null
  wait "$pid"; echo "$?" >"$log.exit"
  exit 0
fi
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
if [ "$cmd" != keep ]; then rm -rf "$dir"; rmdir "$(dirname "$dir")" 2>/dev/null; fi
exit 0"#;

/// How long a supervisor may take to exit after being told to kill its node.
pub(super) const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times [`RealDqlite::start`] re-forms a cluster whose node died while starting
/// (typically a port taken between choosing it and the node binding it).
const START_ATTEMPTS: usize = 3;

/// Launches real C dqlite 1.11 nodes (`dqlite-demo`).
#[derive(Debug, Clone)]
pub struct RealDqlite {
    binary: PathBuf,
    /// Bound for the first node to elect itself, and for a restarted node to answer.
    pub node_start_timeout: Duration,
    /// Bound for all nodes to become voters.
    pub formation_timeout: Duration,
}

impl RealDqlite {
    /// Uses `$DQLITE_DEMO_BIN`, else `dqlite-demo` from `PATH`, else `/usr/bin/dqlite-demo`.
    /// Fails (never skips) when none exists.
    pub fn from_env() -> Result<Self, LaunchError> {
        let binary = match std::env::var_os(DEMO_BIN_ENV) {
            Some(path) => PathBuf::from(path),
            None => find_in_path("dqlite-demo").unwrap_or_else(|| PathBuf::from(DEFAULT_DEMO_BIN)),
        };
        Self::with_binary(binary)
    }

    /// Uses the given `dqlite-demo` binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Result<Self, LaunchError> {
        let binary = binary.into();
        if !binary.is_file() {
            return Err(LaunchError::BinaryMissing { binary: binary.display().to_string(), env: DEMO_BIN_ENV });
        }
        Ok(RealDqlite {
            binary,
            node_start_timeout: Duration::from_secs(20),
            formation_timeout: Duration::from_secs(60),
        })
    }

    fn try_start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        let root = unique_root_dir()?;
        let mut nodes: Vec<DemoNode> = Vec::with_capacity(n_nodes);
        for i in 0..n_nodes {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8));
            let (db, api) = (free_addr(ip)?, free_addr(ip)?);
            nodes.push(DemoNode::new(i, self.binary.clone(), db, api, root.join(format!("node{i}"))));
        }
        // The first node bootstraps the cluster and must be leader before others join it.
        let seed = nodes[0].db;
        nodes[0].spawn(None)?;
        let start = Instant::now();
        loop {
            if !nodes[0].is_running() {
                return Err(nodes[0].exited("bootstrap"));
            }
            if probe::leader(seed, PROBE_TIMEOUT).ok().flatten() == Some(seed.to_string()) {
                break;
            }
            if start.elapsed() >= self.node_start_timeout {
                return Err(LaunchError::Timeout {
                    what: format!("node 0 ({seed}) to elect itself leader"),
                    waited: start.elapsed(),
                    detail: nodes[0].log_tail(4096),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        for node in nodes.iter_mut().skip(1) {
            node.spawn(Some(seed))?;
        }
        let mut boxed: Vec<Box<dyn NodeProcess>> = Vec::with_capacity(n_nodes);
        for node in nodes {
            boxed.push(Box::new(node));
        }
        let mut cluster = Cluster::from_nodes("real", boxed);
        self.wait_formed(&mut cluster, n_nodes)?;
        Ok(cluster)
    }

    /// Waits until every node is a voter, failing early if a node exits.
    fn wait_formed(&self, cluster: &mut Cluster, n_nodes: usize) -> Result<(), LaunchError> {
        let start = Instant::now();
        let mut observed = String::from("nothing yet");
        loop {
            for i in 0..n_nodes {
                if !cluster.is_running(i) {
                    return Err(LaunchError::NodeExited {
                        node: i,
                        address: cluster.address(i),
                        during: "cluster formation".into(),
                        log_tail: cluster.nodes[i].log_tail(4096),
                    });
                }
            }
            if let Ok(members) = cluster.members() {
                let voters = members.iter().filter(|m| m.role == Role::Voter).count();
                if voters == n_nodes && members.len() == n_nodes {
                    tracing::info!(n_nodes, waited = ?start.elapsed(), "real dqlite cluster formed");
                    return Ok(());
                }
                observed = format!("configuration: {members:?}");
            }
            if start.elapsed() >= self.formation_timeout {
                return Err(cluster.timeout(&format!("{n_nodes} voters"), start.elapsed(), observed));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

impl Launcher for RealDqlite {
    fn name(&self) -> &'static str {
        "real"
    }

    fn start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        if n_nodes == 0 || n_nodes > 250 {
            return Err(LaunchError::Invalid(format!("cannot start {n_nodes} nodes (1..=250)")));
        }
        let mut attempt = 1;
        loop {
            match self.try_start(n_nodes) {
                // A node that died while starting most likely lost its port to another process
                // between our choosing it and its binding it: re-form on fresh ports.
                Err(err @ LaunchError::NodeExited { .. }) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, %err, "a node died while the cluster formed; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// One `dqlite-demo` process under its supervising shell.
struct DemoNode {
    index: usize,
    binary: PathBuf,
    db: SocketAddr,
    api: SocketAddr,
    dir: PathBuf,
    running: Option<Supervised>,
}

struct Supervised {
    shell: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl DemoNode {
    fn new(index: usize, binary: PathBuf, db: SocketAddr, api: SocketAddr, dir: PathBuf) -> Self {
        DemoNode { index, binary, db, api, dir, running: None }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dqlite-demo.log")
    }

    fn spawn(&mut self, join: Option<SocketAddr>) -> Result<(), LaunchError> {
        let io = |what: &str| {
            let what = format!("{what} for node {} ({})", self.index, self.db);
            move |source| LaunchError::Io { what, source }
        };
        fs::create_dir_all(&self.dir).map_err(io("creating the data directory"))?;
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("dqlite-supervisor")
            .arg(self.log_path())
            .arg(&self.dir)
            .arg(&self.binary)
            .arg("--api")
            .arg(self.api.to_string())
            .arg("--db")
            .arg(self.db.to_string())
            .arg("-D")
            .arg(&self.dir);
        if let Some(seed) = join {
            command.arg("--join").arg(seed.to_string());
        }
        let mut shell = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("spawning the supervising sh"))?;
        let stdin = shell.stdin.take();
        let mut line = String::new();
        let read = match shell.stdout.take() {
            Some(stdout) => BufReader::new(stdout).read_line(&mut line),
            None => Ok(0),
        };
        let pid = match read.map(|_| line.trim().parse::<u32>()) {
            Ok(Ok(pid)) => pid,
            other => {
                let _ = shell.kill();
                let _ = shell.wait();
                return Err(LaunchError::Io {
                    what: format!("reading node {}'s pid from its supervisor (got {line:?})", self.index),
                    source: match other {
                        Err(e) => e,
                        Ok(Err(e)) => std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                        Ok(Ok(_)) => unreachable!("handled above"),
                    },
                });
            }
        };
        tracing::debug!(node = self.index, db = %self.db, pid, ?join, "dqlite-demo started");
        self.running = Some(Supervised { shell, stdin, pid });
        Ok(())
    }

    /// Tells the supervisor to SIGKILL the node (`keep` = keep its data) and waits for it.
    fn stop(&mut self, keep: bool) -> Result<(), LaunchError> {
        let Some(mut sup) = self.running.take() else {
            return Ok(());
        };
        if let Some(mut stdin) = sup.stdin.take() {
            // A write error means the supervisor is already gone; waiting below covers it.
            let _ = stdin.write_all(if keep { b"keep\n" } else { b"drop\n" });
        }
        let start = Instant::now();
        loop {
            match sup.shell.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if start.elapsed() < KILL_TIMEOUT => std::thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    let _ = sup.shell.kill();
                    let _ = sup.shell.wait();
                    return Err(LaunchError::Timeout {
                        what: format!("node {} (pid {}) to die after SIGKILL", self.index, sup.pid),
                        waited: start.elapsed(),
                        detail: String::new(),
                    });
                }
                Err(source) => {
                    return Err(LaunchError::Io {
                        what: format!("waiting for node {}'s supervisor", self.index),
                        source,
                    })
                }
            }
        }
    }

    fn exited(&self, during: &str) -> LaunchError {
        LaunchError::NodeExited {
            node: self.index,
            address: self.db,
            during: during.to_owned(),
            log_tail: self.log_tail(4096),
        }
    }
}

impl NodeProcess for DemoNode {
    fn address(&self) -> SocketAddr {
        self.db
    }

    fn kill(&mut self) -> Result<(), LaunchError> {
        if self.running.is_none() {
            return Err(LaunchError::Invalid(format!("node {} is not running", self.index)));
        }
        self.stop(true)
    }

    fn restart(&mut self) -> Result<(), LaunchError> {
        if self.running.is_some() {
            return Err(LaunchError::Invalid(format!("node {} is already running", self.index)));
        }
        // The data directory remembers the cluster; no --join needed.
        self.spawn(None)?;
        let start = Instant::now();
        loop {
            if !self.is_running() {
                return Err(self.exited("restart"));
            }
            if probe::leader(self.db, PROBE_TIMEOUT).is_ok() {
                return Ok(());
            }
            if start.elapsed() >= Duration::from_secs(20) {
                return Err(LaunchError::Timeout {
                    what: format!("restarted node {} ({}) to answer requests", self.index, self.db),
                    waited: start.elapsed(),
                    detail: self.log_tail(4096),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn is_running(&mut self) -> bool {
        let Some(sup) = self.running.as_mut() else {
            return false;
        };
        if !matches!(sup.shell.try_wait(), Ok(None)) {
            return false;
        }
        // The node is the supervisor's child; until the supervisor reaps it, a dead node is a
        // zombie ('Z'), so the state letter is what tells.
        match fs::read_to_string(format!("/proc/{}/stat", sup.pid)) {
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| state != 'Z' && state != 'X'),
            // No procfs (not Linux): trust the supervisor being alive.
            Err(_) if !Path::new("/proc/self").exists() => true,
            Err(_) => false,
        }
    }

    fn log_tail(&self, max_bytes: usize) -> String {
        let Ok(mut file) = fs::File::open(self.log_path()) else {
            return "(no log)".to_owned();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(max_bytes as u64)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        if self.running.is_some() {
            if let Err(err) = self.stop(false) {
                tracing::warn!(node = self.index, %err, "could not stop dqlite-demo");
            }
        } else {
            // Killed earlier with its data kept: remove it now.
            let _ = fs::remove_dir_all(&self.dir);
            if let Some(parent) = self.dir.parent() {
                let _ = fs::remove_dir(parent);
            }
        }
    }
}

/// A port that is free on `ip` right now (the kernel picks it; the listener is closed at once).
pub(super) fn free_addr(ip: IpAddr) -> Result<SocketAddr, LaunchError> {
    let listener = TcpListener::bind((ip, 0)).map_err(|source| LaunchError::Io {
        what: format!("binding a free port on {ip} (is the loopback interface up?)"),
        source,
    })?;
    listener.local_addr().map_err(|source| LaunchError::Io { what: "reading a bound address".into(), source })
}

pub(super) fn unique_root_dir() -> Result<PathBuf, LaunchError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "dqlite-rs-cluster-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)
        .map_err(|source| LaunchError::Io { what: format!("creating {}", dir.display()), source })?;
    Ok(dir)
}

pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_is_a_loud_error_naming_the_package() {
        let err = RealDqlite::with_binary("/nonexistent/dqlite-demo").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("apt-get install -y go-dqlite"), "{message}");
        assert!(message.contains("/nonexistent/dqlite-demo"), "{message}");
    }

    #[test]
    fn zero_nodes_is_rejected() {
        let launcher = RealDqlite {
            binary: PathBuf::from("/bin/sh"),
            node_start_timeout: Duration::from_secs(1),
            formation_timeout: Duration::from_secs(1),
        };
        assert!(matches!(launcher.start(0), Err(LaunchError::Invalid(_))));
    }
}
