//! [`EmbeddedDqlite`]: clusters of this project's nodes running inside the test process
//! (selected by `DQLITE_TEST_LAUNCHER=embedded`).
//!
//! Each node is an [`EmbeddedNode`] started with [`NodeBuilder`] on 127.0.0.x and a port of
//! its own, on the process-wide engine runtime (so it outlives the async runtime of the test
//! that started it). Node 0 bootstraps; the others join through it; the first three become
//! voters. The cluster's URLs carry node 0's data directory (`data=DIR`), so a pool opened on
//! them attaches to node 0 in process and, while it leads, every statement takes the
//! in-process pipe instead of a socket: the driver suite then checks the in-process path with
//! the same tests as the wire path. Peers and probes still use TCP.
//!
//! `kill` stops a node abruptly (no leadership handover, as a crash looks to its peers); its
//! data stays for `restart`. Dropping the cluster closes every node and removes the data.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dqlite_node::embedded::{block_on_engine, EmbeddedError, EmbeddedNode, NodeBuilder};

use super::real::{free_addr, unique_root_dir};
use super::{has_voters, wait_bootstrap_leader, Cluster, LaunchError, Launcher, NodeProcess, POLL_INTERVAL};

/// The first members up to this many are voters (the node's default rule).
const VOTERS: usize = 3;

/// Launches nodes inside this process.
#[derive(Debug, Clone)]
pub struct EmbeddedDqlite {
    /// Bound for the first node to elect itself, and for a restarted node to start.
    pub node_start_timeout: Duration,
    /// Bound for the cluster to form.
    pub formation_timeout: Duration,
}

impl Default for EmbeddedDqlite {
    fn default() -> Self {
        EmbeddedDqlite { node_start_timeout: Duration::from_secs(20), formation_timeout: Duration::from_secs(60) }
    }
}

impl EmbeddedDqlite {
    /// The launcher with its default bounds (it needs nothing installed).
    pub fn new() -> Self {
        Self::default()
    }

    fn try_start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        let root = unique_root_dir()?;
        let mut nodes: Vec<InProcessNode> = Vec::with_capacity(n_nodes);
        for i in 0..n_nodes {
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 250) as u8));
            nodes.push(InProcessNode {
                index: i,
                address: free_addr(ip)?,
                dir: root.join(format!("node{i}")),
                join: None,
                node: None,
                last_error: String::new(),
            });
        }
        let seed = nodes[0].address;
        nodes[0].start(self.node_start_timeout)?;
        wait_bootstrap_leader(&mut nodes[0], self.node_start_timeout)?;
        for node in nodes.iter_mut().skip(1) {
            node.join = Some(seed);
            node.start(self.node_start_timeout)?;
        }
        let handles: Vec<EmbeddedNode> = nodes.iter().filter_map(|n| n.node.clone()).collect();
        let boxed: Vec<Box<dyn NodeProcess>> = nodes.into_iter().map(|n| Box::new(n) as Box<dyn NodeProcess>).collect();
        let mut cluster = Cluster::from_nodes("embedded", boxed);
        self.wait_formed(&mut cluster, n_nodes)?;
        self.lead_from_node_0(&mut cluster, &handles)?;
        Ok(cluster)
    }

    /// Makes node 0 the leader (it bootstrapped, so it almost always is already): the
    /// cluster's URLs name it, and its connections take the in-process path only while it leads.
    fn lead_from_node_0(&self, cluster: &mut Cluster, nodes: &[EmbeddedNode]) -> Result<(), LaunchError> {
        let target = nodes[0].id();
        let start = Instant::now();
        loop {
            let leader = cluster.wait_for_leader(self.formation_timeout)?;
            if leader == 0 {
                return Ok(());
            }
            if start.elapsed() >= self.formation_timeout {
                return Err(cluster.timeout("node 0 to lead", start.elapsed(), format!("node {leader} leads")));
            }
            tracing::info!(leader, "moving leadership to node 0");
            if let Some(node) = nodes.get(leader).cloned() {
                let moved = block_on_engine(async move { node.runtime().transfer(Some(target)).await.map(|_| ()) });
                tracing::debug!(?moved, "leadership transfer");
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until `VOTERS` nodes (or all, if fewer) are voters.
    fn wait_formed(&self, cluster: &mut Cluster, n_nodes: usize) -> Result<(), LaunchError> {
        let voters = n_nodes.min(VOTERS);
        cluster.wait_formed(&format!("{voters} voters of {n_nodes}"), self.formation_timeout, |m| {
            has_voters(m, n_nodes, voters)
        })
    }
}

impl Launcher for EmbeddedDqlite {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn start(&self, n_nodes: usize) -> Result<Cluster, LaunchError> {
        if n_nodes == 0 || n_nodes > 250 {
            return Err(LaunchError::Invalid(format!("cannot start {n_nodes} nodes (1..=250)")));
        }
        self.try_start(n_nodes)
    }
}

/// One node of an [`EmbeddedDqlite`] cluster.
struct InProcessNode {
    index: usize,
    address: SocketAddr,
    dir: PathBuf,
    join: Option<SocketAddr>,
    node: Option<EmbeddedNode>,
    /// Why the last start failed, for error messages (in-process nodes log through `tracing`).
    last_error: String,
}

impl InProcessNode {
    fn start(&mut self, bound: Duration) -> Result<(), LaunchError> {
        let mut builder = NodeBuilder::new(&self.dir).address(self.address.to_string());
        if let Some(seed) = self.join {
            builder = builder.join([seed.to_string()]);
        }
        // The port was free when picked, and a killed node's listener closes asynchronously:
        // retry a failed bind within the bound.
        let start = Instant::now();
        loop {
            let b = builder.clone();
            match block_on_engine(b.start()) {
                Ok(Ok(node)) => {
                    tracing::info!(node = self.index, address = %self.address, id = %node.id(), "embedded node started");
                    self.node = Some(node);
                    return Ok(());
                }
                Ok(Err(e)) if start.elapsed() < bound && is_transient(&e) => {
                    self.last_error = e.to_string();
                    std::thread::sleep(POLL_INTERVAL);
                }
                Ok(Err(e)) => {
                    self.last_error = e.to_string();
                    return Err(LaunchError::Invalid(format!(
                        "embedded node {} ({}) did not start: {e}",
                        self.index, self.address
                    )));
                }
                Err(e) => return Err(LaunchError::Invalid(format!("embedded node {}: {e}", self.index))),
            }
        }
    }
}

/// A start failure that a retry can cure (the address still in use by a node just killed).
fn is_transient(e: &EmbeddedError) -> bool {
    match e {
        EmbeddedError::AlreadyRunning { .. } => true,
        EmbeddedError::Start { .. } => {
            let text = e.to_string();
            text.contains("in use") || text.contains("AddrInUse")
        }
        _ => false,
    }
}

impl NodeProcess for InProcessNode {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn kill(&mut self) -> Result<(), LaunchError> {
        let node = self
            .node
            .take()
            .ok_or_else(|| LaunchError::Invalid(format!("embedded node {} is not running", self.index)))?;
        block_on_engine(async move { node.kill().await })
            .map_err(|e| LaunchError::Invalid(format!("killing embedded node {}: {e}", self.index)))
    }

    fn restart(&mut self) -> Result<(), LaunchError> {
        if self.node.is_some() {
            return Err(LaunchError::Invalid(format!("embedded node {} is already running", self.index)));
        }
        self.start(Duration::from_secs(20))
    }

    fn is_running(&mut self) -> bool {
        self.node.as_ref().is_some_and(|n| !n.is_closed())
    }

    fn log_tail(&self, _max_bytes: usize) -> String {
        let state = match &self.node {
            Some(n) if !n.is_closed() => {
                let n = n.clone();
                block_on_engine(async move { n.describe().await })
                    .map(|d| d.unwrap_or_else(|e| e.to_string()))
                    .unwrap_or_else(|e| e.to_string())
            }
            _ => "not running".to_owned(),
        };
        let last =
            if self.last_error.is_empty() { String::new() } else { format!("; last start error: {}", self.last_error) };
        format!("(in-process node: its logs go through `tracing`, RUST_LOG=debug) {state}{last}")
    }

    fn url_options(&self) -> Option<String> {
        Some(format!("data={}", percent_encode(&self.dir.to_string_lossy())))
    }
}

impl Drop for InProcessNode {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            if let Err(err) = block_on_engine(async move { node.close().await }) {
                tracing::warn!(node = self.index, %err, "could not close the embedded node");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

/// `text` percent-encoded for a URL query value (everything but unreserved characters and `/`).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::percent_encode;

    #[test]
    fn data_dirs_are_percent_encoded() {
        assert_eq!(percent_encode("/tmp/a b&c=d%/node0"), "/tmp/a%20b%26c%3Dd%25/node0");
    }
}
