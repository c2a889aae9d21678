//! [`RealDqlite`]: clusters of Canonical's C dqlite 1.11, run as Debian's `dqlite-demo`
//! processes (package `go-dqlite`) on 127.0.0.x.
//!
//! `dqlite-demo --api API --db DB -D DIR [--join DB0]` runs one node: `DB` is the dqlite
//! address (client protocol and Raft), `API` an HTTP demo endpoint we do not use. A joining
//! node is added as a spare and go-dqlite's `app` package promotes it to voter by itself
//! (about 2 s for a 3-node cluster on an idle machine); the launcher waits for that through the
//! wire protocol's CLUSTER request.
//!
//! Each node runs under a tiny supervising `sh` (`supervised.rs`, shared with
//! [`OwnDqlite`](super::OwnDqlite)) whose standard input is a pipe from the test process: one
//! line `keep` on it means "SIGKILL the node, keep its data" ([`NodeProcess::kill`]), `term`
//! means SIGTERM ([`NodeProcess::terminate`]), end-of-file means "SIGKILL the node and delete
//! its data". End-of-file also happens when the test process dies for any reason, so no node
//! outlives its test, even one kept in a `static`.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::supervised::{self, Supervised};
use super::{
    has_voters, wait_bootstrap_leader, wait_restarted, Cluster, LaunchError, Launcher, NodeProcess, RESTART_TIMEOUT,
};

/// Environment variable overriding the `dqlite-demo` path.
pub const DEMO_BIN_ENV: &str = "DQLITE_DEMO_BIN";
const DEFAULT_DEMO_BIN: &str = "/usr/bin/dqlite-demo";

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
        wait_bootstrap_leader(&mut nodes[0], self.node_start_timeout)?;
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
        cluster.wait_formed(&format!("{n_nodes} voters"), self.formation_timeout, |m| has_voters(m, n_nodes, n_nodes))
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

impl DemoNode {
    fn new(index: usize, binary: PathBuf, db: SocketAddr, api: SocketAddr, dir: PathBuf) -> Self {
        DemoNode { index, binary, db, api, dir, running: None }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dqlite-demo.log")
    }

    fn spawn(&mut self, join: Option<SocketAddr>) -> Result<(), LaunchError> {
        fs::create_dir_all(&self.dir).map_err(|source| LaunchError::Io {
            what: format!("creating the data directory for node {} ({})", self.index, self.db),
            source,
        })?;
        let mut args = vec![
            "--api".to_owned(),
            self.api.to_string(),
            "--db".to_owned(),
            self.db.to_string(),
            "-D".to_owned(),
            self.dir.display().to_string(),
        ];
        if let Some(seed) = join {
            args.extend(["--join".to_owned(), seed.to_string()]);
        }
        let sup = Supervised::spawn(self.index, &self.log_path(), &self.dir, &self.binary, &args, &[])?;
        tracing::debug!(node = self.index, db = %self.db, pid = sup.pid(), ?join, "dqlite-demo started");
        self.running = Some(sup);
        Ok(())
    }

    /// Tells the supervisor to SIGKILL the node (`keep` = keep its data) and waits for it.
    fn stop(&mut self, keep: bool) -> Result<(), LaunchError> {
        match self.running.take() {
            Some(sup) => sup.stop(keep),
            None => Ok(()),
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

    fn terminate(&mut self) -> Result<i32, LaunchError> {
        let Some(sup) = self.running.take() else {
            return Err(LaunchError::Invalid(format!("node {} is not running", self.index)));
        };
        let log = self.log_path();
        sup.terminate(&log, Duration::from_secs(45), || supervised::log_tail(&log, 4096))
    }

    fn restart(&mut self) -> Result<(), LaunchError> {
        if self.running.is_some() {
            return Err(LaunchError::Invalid(format!("node {} is already running", self.index)));
        }
        // The data directory remembers the cluster; no --join needed.
        self.spawn(None)?;
        let index = self.index;
        wait_restarted(self, index, RESTART_TIMEOUT)
    }

    fn is_running(&mut self) -> bool {
        self.running.as_mut().is_some_and(|sup| sup.is_running())
    }

    fn log_tail(&self, max_bytes: usize) -> String {
        supervised::log_tail(&self.log_path(), max_bytes)
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
