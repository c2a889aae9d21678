//! [`OwnDqlite`]: clusters of this project's own nodes, run as `dqlited run` processes on
//! 127.0.0.x (selected by `DQLITE_TEST_LAUNCHER=own`).
//!
//! Node 0 bootstraps (`dqlited run --address A0 --data D0`); the others join through it
//! (`--join A0`); the first three become voters, later ones standbys. Each node runs under
//! the same supervising `sh` as [`RealDqlite`](super::RealDqlite)'s nodes (`supervised.rs`): `kill` is a
//! SIGKILL that keeps the data, and the nodes die with the test process.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::real::{find_in_path, free_addr, unique_root_dir};
use super::supervised::{self, Supervised};
use super::{
    has_voters, wait_bootstrap_leader, wait_restarted, Cluster, LaunchError, Launcher, NodeProcess, Role,
    RESTART_TIMEOUT,
};

/// Environment variable overriding the `dqlited` path.
pub const DQLITED_BIN_ENV: &str = "DQLITED_BIN";

/// Environment variable: when set, each node's log (`<root>/nodeN.log`, beside its data
/// directory) is kept after the cluster is dropped, for post-mortems.
pub const KEEP_LOGS_ENV: &str = "DQLITE_TEST_KEEP_LOGS";

/// How long a node may take to exit after SIGTERM (`dqlited run` gives itself 30 s).
const TERM_TIMEOUT: Duration = Duration::from_secs(45);

/// The first members up to this many are voters (`dqlited run`'s rule).
const VOTERS: usize = 3;

/// Launches `dqlited run` nodes.
#[derive(Debug, Clone)]
pub struct OwnDqlite {
    binary: PathBuf,
    /// Bound for the first node to elect itself, and for a restarted node to answer.
    pub node_start_timeout: Duration,
    /// Bound for the cluster to form.
    pub formation_timeout: Duration,
}

impl OwnDqlite {
    /// Uses `$DQLITED_BIN`, else a `dqlited` next to the running executable or its parent
    /// directory (cargo's `target/<profile>/` for tests), else `dqlited` from `PATH`. Fails (never
    /// skips) when none exists.
    pub fn from_env() -> Result<Self, LaunchError> {
        let binary = match std::env::var_os(DQLITED_BIN_ENV) {
            Some(path) => PathBuf::from(path),
            None => beside_current_exe("dqlited")
                .or_else(|| find_in_path("dqlited"))
                .unwrap_or_else(|| PathBuf::from("dqlited")),
        };
        Self::with_binary(binary)
    }

    /// Uses the given `dqlited` binary.
    pub fn with_binary(binary: impl Into<PathBuf>) -> Result<Self, LaunchError> {
        let binary = binary.into();
        if !binary.is_file() {
            return Err(LaunchError::Invalid(format!(
                "{} not found: the `own` launcher runs this project's nodes; build them with \
                 `cargo build --bin dqlited`, or point {DQLITED_BIN_ENV} at a dqlited binary",
                binary.display()
            )));
        }
        Ok(OwnDqlite {
            binary,
            node_start_timeout: Duration::from_secs(20),
            formation_timeout: Duration::from_secs(60),
        })
    }

    fn try_start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        let root = unique_root_dir()?;
        let mut nodes: Vec<OwnNode> = Vec::with_capacity(n_nodes);
        for i in 0..n_nodes {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8));
            nodes.push(OwnNode {
                index: i,
                binary: self.binary.clone(),
                address: free_addr(ip)?,
                dir: root.join(format!("node{i}")),
                running: None,
            });
        }
        let seed = nodes[0].address;
        nodes[0].spawn(None)?;
        wait_bootstrap_leader(&mut nodes[0], self.node_start_timeout)?;
        for node in nodes.iter_mut().skip(1) {
            node.spawn(Some(seed))?;
        }
        let boxed: Vec<Box<dyn NodeProcess>> = nodes.into_iter().map(|n| Box::new(n) as Box<dyn NodeProcess>).collect();
        let mut cluster = Cluster::from_nodes("own", boxed);
        self.wait_formed(&mut cluster, n_nodes)?;
        Ok(cluster)
    }

    /// Waits until `VOTERS` nodes (or all, if fewer) are voters and the others standbys.
    fn wait_formed(&self, cluster: &mut Cluster, n_nodes: usize) -> Result<(), LaunchError> {
        let voters = n_nodes.min(VOTERS);
        cluster.wait_formed(&format!("{voters} voters of {n_nodes}"), self.formation_timeout, |m| {
            has_voters(m, n_nodes, voters) && m.iter().all(|s| matches!(s.role, Role::Voter | Role::Standby))
        })
    }
}

impl Launcher for OwnDqlite {
    fn name(&self) -> &'static str {
        "own"
    }

    fn start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        if n_nodes == 0 || n_nodes > 250 {
            return Err(LaunchError::Invalid(format!("cannot start {n_nodes} nodes (1..=250)")));
        }
        let mut attempt = 1;
        loop {
            match self.try_start(n_nodes) {
                Err(err @ LaunchError::NodeExited { .. }) if attempt < 3 => {
                    tracing::warn!(attempt, %err, "a node died while the cluster formed; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

fn beside_current_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)].into_iter().find(|p| p.is_file())
}

/// One `dqlited run` process under its supervising shell.
struct OwnNode {
    index: usize,
    binary: PathBuf,
    address: SocketAddr,
    dir: PathBuf,
    running: Option<Supervised>,
}

impl OwnNode {
    fn log_path(&self) -> PathBuf {
        // Beside the data directory, so it survives restarts and is removed with it.
        self.dir.with_extension("log")
    }

    fn spawn(&mut self, join: Option<SocketAddr>) -> Result<(), LaunchError> {
        fs::create_dir_all(&self.dir).map_err(|source| LaunchError::Io {
            what: format!("creating the data directory for node {} ({})", self.index, self.address),
            source,
        })?;
        let mut args = vec![
            "run".to_owned(),
            "--address".to_owned(),
            self.address.to_string(),
            "--data".to_owned(),
            self.dir.display().to_string(),
        ];
        if let Some(seed) = join {
            args.extend(["--join".to_owned(), seed.to_string()]);
        }
        let env: &[(&str, &str)] = if std::env::var_os("RUST_LOG").is_none() { &[("RUST_LOG", "info")] } else { &[] };
        let sup = Supervised::spawn(self.index, &self.log_path(), &self.dir, &self.binary, &args, env)?;
        tracing::debug!(node = self.index, address = %self.address, pid = sup.pid(), ?join, "dqlited started");
        self.running = Some(sup);
        Ok(())
    }

    fn stop(&mut self, keep: bool) -> Result<(), LaunchError> {
        match self.running.take() {
            Some(sup) => sup.stop(keep),
            None => Ok(()),
        }
    }

    /// SIGTERM through the supervisor; waits (bounded) for the node to exit and returns its
    /// exit status.
    fn terminate_now(&mut self) -> Result<i32, LaunchError> {
        let Some(sup) = self.running.take() else {
            return Err(LaunchError::Invalid(format!("node {} is not running", self.index)));
        };
        let log = self.log_path();
        sup.terminate(&log, TERM_TIMEOUT, || supervised::log_tail(&log, 4096))
    }
}

impl NodeProcess for OwnNode {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn kill(&mut self) -> Result<(), LaunchError> {
        if self.running.is_none() {
            return Err(LaunchError::Invalid(format!("node {} is not running", self.index)));
        }
        self.stop(true)
    }

    fn terminate(&mut self) -> Result<i32, LaunchError> {
        self.terminate_now()
    }

    fn restart(&mut self) -> Result<(), LaunchError> {
        if self.running.is_some() {
            return Err(LaunchError::Invalid(format!("node {} is already running", self.index)));
        }
        // The data directory holds the node id and the membership: no --join needed.
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

impl Drop for OwnNode {
    fn drop(&mut self) {
        if self.running.is_some() {
            if let Err(err) = self.stop(false) {
                tracing::warn!(node = self.index, %err, "could not stop dqlited");
            }
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
        let _ = fs::remove_file(supervised::exit_path(&self.log_path()));
        if std::env::var_os(KEEP_LOGS_ENV).is_none() {
            let _ = fs::remove_file(self.log_path());
        }
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_is_a_loud_error() {
        let err = OwnDqlite::with_binary("/nonexistent/dqlited").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/nonexistent/dqlited") && message.contains(DQLITED_BIN_ENV), "{message}");
    }
}
