//! Start and drive throw-away dqlite clusters for tests and examples.
//!
//! The integration suite does not care *which* dqlite it talks to: it takes a [`Cluster`] from a
//! [`Launcher`]. Today the only launcher is [`RealDqlite`], which runs Canonical's C dqlite 1.11
//! through Debian's `dqlite-demo` (package `go-dqlite`); a launcher for this project's own nodes
//! plugs in beside it, and [`launcher_from_env`] picks one by the `DQLITE_TEST_LAUNCHER`
//! environment variable, so the same tests run unchanged against either.
//!
//! ```text
//!  test ── launcher_from_env() ──> Launcher::start(n) ──> Cluster
//!                                                          │ nodes: Vec<Box<dyn NodeProcess>>
//!                                                          │   kill(i) / restart(i)  (processes)
//!                                                          │ wait_for_leader / wait_for_voters
//!                                                          ▼   (LEADER / CLUSTER wire requests)
//!                                             127.0.0.x:port  127.0.0.y:port  ...
//! ```
//!
//! What this module does **not** do: it never skips. A missing `dqlite-demo` is an error that
//! says how to install it. Every wait has a bound and its timeout error says what it waited for
//! and shows the tail of the nodes' logs. It never sleeps to hope a condition became true: it
//! polls the condition at [`POLL_INTERVAL`] until a deadline.
//!
//! The API is blocking (plain threads and sockets, no async runtime), so it works from any
//! test. From async code, call it through `tokio::task::block_in_place` (multi-threaded
//! runtime) or `spawn_blocking`, so the runtime keeps driving connections meanwhile.
//!
//! Processes are cleaned up by [`Cluster`]'s `Drop` (SIGKILL, then the data directory is
//! removed) and, should the test process die without unwinding, by a small supervising shell
//! that kills its node when the test process's end of a pipe closes.

mod embedded;
mod own;
mod probe;
mod real;
mod supervised;

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use embedded::EmbeddedDqlite;
pub use own::OwnDqlite;
pub use probe::{Role, ServerInfo};
pub use real::RealDqlite;

/// How often waits re-check their condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Timeout of one probe request (connect, write, read) against one node.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a restarted node may take to answer requests again.
pub(crate) const RESTART_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variable selecting the launcher; see [`launcher_from_env`].
pub const LAUNCHER_ENV: &str = "DQLITE_TEST_LAUNCHER";

/// Something that can start a cluster of `n_nodes` dqlite-protocol nodes on this machine.
pub trait Launcher: Send + Sync {
    /// Short name, as accepted by [`launcher_from_env`].
    fn name(&self) -> &'static str;

    /// Starts `n_nodes` nodes and returns once they form one cluster in which every node is a
    /// voter and a leader is elected (a bounded wait; see the implementation's timeouts).
    fn start(&self, n_nodes: usize) -> Result<Cluster, LaunchError>;
}

/// One node process owned by a [`Cluster`]. Implementations decide how a node runs; the
/// cluster-level logic (leader, membership) only uses the wire protocol.
pub trait NodeProcess: Send + Sync {
    /// The address clients (and the probe) connect to.
    fn address(&self) -> SocketAddr;
    /// Kills the node abruptly (SIGKILL for a process) and waits until it is gone. Its data
    /// stays, so [`NodeProcess::restart`] can bring it back.
    fn kill(&mut self) -> Result<(), LaunchError>;
    /// Starts a killed node again on the same address and data.
    fn restart(&mut self) -> Result<(), LaunchError>;
    /// Stops the node gracefully (SIGTERM for a process) and waits until it is gone; returns
    /// its exit code. Its data stays, so [`NodeProcess::restart`] can bring it back.
    fn terminate(&mut self) -> Result<i32, LaunchError> {
        Err(LaunchError::Invalid("this launcher cannot stop a node gracefully".into()))
    }
    /// Whether the node is (still) running.
    fn is_running(&mut self) -> bool;
    /// The last `max_bytes` of the node's log, for error messages.
    fn log_tail(&self, max_bytes: usize) -> String;
    /// Query options a URL naming this node as its host carries (`data=DIR` for a node of
    /// this process, so connections attach to it in process); `None` for other processes.
    fn url_options(&self) -> Option<String> {
        None
    }
}

/// Why launching or driving a cluster failed. Messages are written for the person reading a
/// failed CI log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// The node binary does not exist.
    #[error(
        "{binary} not found: the tests need real dqlite nodes; install them with \
         `apt-get install -y go-dqlite` (Debian/Ubuntu), or point {env} at a dqlite-demo binary"
    )]
    BinaryMissing {
        /// The path that was looked up.
        binary: String,
        /// The environment variable that overrides the path.
        env: &'static str,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out.
    #[error("timed out after {waited:?} waiting for {what}\n{detail}")]
    Timeout {
        /// The condition waited for.
        what: String,
        /// How long it waited.
        waited: Duration,
        /// Last observation and node log tails.
        detail: String,
    },
    /// A node process exited while it should have been running.
    #[error("node {node} ({address}) exited during {during}\n--- its log ---\n{log_tail}")]
    NodeExited {
        /// Node index in the cluster.
        node: usize,
        /// Its address.
        address: SocketAddr,
        /// What the launcher was doing.
        during: String,
        /// The end of the node's log.
        log_tail: String,
    },
    /// `DQLITE_TEST_LAUNCHER` names no known launcher.
    #[error("{LAUNCHER_ENV}={0:?} names no launcher; known launchers: real, own, embedded")]
    UnknownLauncher(String),
    /// A node index out of range, or a request that makes no sense for the cluster's state.
    #[error("{0}")]
    Invalid(String),
}

/// Returns the launcher named by `DQLITE_TEST_LAUNCHER` (default `real`).
///
/// * `real`: [`RealDqlite`], C dqlite 1.11 via Debian's `dqlite-demo`.
/// * `own`: [`OwnDqlite`], this project's nodes via `dqlited run`.
/// * `embedded`: [`EmbeddedDqlite`], this project's nodes inside the test process (URLs carry
///   node 0's `data=DIR`, so connections take the in-process path while it leads).
pub fn launcher_from_env() -> Result<Box<dyn Launcher>, LaunchError> {
    let name = std::env::var(LAUNCHER_ENV).unwrap_or_default();
    launcher_by_name(&name)
}

/// Returns the launcher called `name` (`""` means the default, `real`).
pub fn launcher_by_name(name: &str) -> Result<Box<dyn Launcher>, LaunchError> {
    match name {
        "real" | "" => Ok(Box::new(RealDqlite::from_env()?)),
        "own" => Ok(Box::new(OwnDqlite::from_env()?)),
        "embedded" => Ok(Box::new(EmbeddedDqlite::new())),
        other => Err(LaunchError::UnknownLauncher(other.to_owned())),
    }
}

/// A running cluster. Dropping it kills every node and removes its data.
pub struct Cluster {
    launcher: &'static str,
    nodes: Vec<Box<dyn NodeProcess>>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster").field("launcher", &self.launcher).field("nodes", &self.addresses()).finish()
    }
}

impl Cluster {
    /// Wraps already-started nodes. Launchers call this; it does not wait for anything.
    pub fn from_nodes(launcher: &'static str, nodes: Vec<Box<dyn NodeProcess>>) -> Self {
        Cluster { launcher, nodes }
    }

    /// Name of the launcher that started this cluster.
    pub fn launcher(&self) -> &'static str {
        self.launcher
    }

    /// Number of nodes (running or killed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Client address of node `i`.
    ///
    /// # Panics
    /// If `i` is out of range (a bug in the calling test).
    pub fn address(&self, i: usize) -> SocketAddr {
        self.nodes[i].address()
    }

    /// Client addresses of every node, in node order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.address()).collect()
    }

    /// A `dqlite://` URL for `database` naming node 0 as host and every other node as a peer.
    pub fn url(&self, database: &str) -> String {
        self.url_with(database, "")
    }

    /// Like [`Cluster::url`], with extra query options appended (`"a=1&b=2"`, no leading `&`).
    /// For a cluster of nodes in this process (the `embedded` launcher) the URL also names node
    /// 0's data directory, so that connections attach to it in process.
    pub fn url_with(&self, database: &str, options: &str) -> String {
        let own = self.nodes.first().and_then(|n| n.url_options()).unwrap_or_default();
        match (own.is_empty(), options.is_empty()) {
            (true, _) => self.remote_url_with(database, options),
            (false, true) => self.remote_url_with(database, &own),
            (false, false) => self.remote_url_with(database, &format!("{own}&{options}")),
        }
    }

    /// A URL for `database` that another process can use: like [`Cluster::url`], without
    /// options that only make sense inside this process (an embedded node's `data=DIR`).
    pub fn remote_url(&self, database: &str) -> String {
        self.remote_url_with(database, "")
    }

    fn remote_url_with(&self, database: &str, options: &str) -> String {
        let addrs = self.addresses();
        let mut url = format!("dqlite://{}/{}", addrs[0], database);
        let peers: Vec<String> = addrs[1..].iter().map(|a| a.to_string()).collect();
        let mut query = Vec::new();
        if !peers.is_empty() {
            query.push(format!("peers={}", peers.join(",")));
        }
        if !options.is_empty() {
            query.push(options.to_owned());
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        url
    }

    /// Kills node `i` abruptly (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self, i: usize) -> Result<(), LaunchError> {
        self.check_index(i)?;
        tracing::info!(node = i, address = %self.address(i), "killing node");
        self.nodes[i].kill()
    }

    /// Stops node `i` gracefully (SIGTERM) and waits until it is gone; returns its exit code.
    pub fn terminate(&mut self, i: usize) -> Result<i32, LaunchError> {
        self.check_index(i)?;
        tracing::info!(node = i, address = %self.address(i), "stopping node (SIGTERM)");
        self.nodes[i].terminate()
    }

    /// Restarts killed node `i` on its address and data.
    pub fn restart(&mut self, i: usize) -> Result<(), LaunchError> {
        self.check_index(i)?;
        tracing::info!(node = i, address = %self.address(i), "restarting node");
        self.nodes[i].restart()
    }

    /// Whether node `i` is running.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes.get_mut(i).is_some_and(|n| n.is_running())
    }

    /// The index of the node that currently reports itself as leader, if any: each running
    /// node is asked LEADER, and a node counts only when it names itself (a follower's answer
    /// may name a dead leader).
    pub fn leader(&mut self) -> Option<usize> {
        let addrs = self.addresses();
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].is_running()
                && probe::leader(addrs[i], PROBE_TIMEOUT)
                    .ok()
                    .flatten()
                    .is_some_and(|leader| leader == addrs[i].to_string())
        })
    }

    /// Waits (bounded by `bound`) until some running node reports itself as leader and
    /// returns its index.
    pub fn wait_for_leader(&mut self, bound: Duration) -> Result<usize, LaunchError> {
        self.wait_for_leader_where(bound, |_| true, "a leader among the running nodes")
    }

    /// Waits (bounded by `bound`) for a leader other than node `old` (e.g. after killing it).
    pub fn wait_for_new_leader(&mut self, old: usize, bound: Duration) -> Result<usize, LaunchError> {
        self.wait_for_leader_where(bound, |i| i != old, &format!("a leader other than node {old}"))
    }

    fn wait_for_leader_where(
        &mut self,
        bound: Duration,
        accept: impl Fn(usize) -> bool,
        what: &str,
    ) -> Result<usize, LaunchError> {
        let start = Instant::now();
        let mut last = None;
        loop {
            let now = self.leader();
            if let Some(i) = now.filter(|&i| accept(i)) {
                tracing::info!(node = i, waited = ?start.elapsed(), "leader found");
                return Ok(i);
            }
            last = now.or(last);
            if start.elapsed() >= bound {
                let observed = match last {
                    Some(i) => format!("last leader seen: node {i}"),
                    None => "no node reported itself as leader".to_owned(),
                };
                return Err(self.timeout(what, start.elapsed(), observed));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The configuration as seen by the current leader (one probe, no wait).
    pub fn members(&mut self) -> Result<Vec<ServerInfo>, LaunchError> {
        let leader =
            self.leader().ok_or_else(|| LaunchError::Invalid("no leader to ask for the configuration".into()))?;
        let addr = self.address(leader);
        probe::cluster(addr, PROBE_TIMEOUT)
            .map_err(|source| LaunchError::Io { what: format!("CLUSTER request to node {leader} ({addr})"), source })
    }

    /// Waits (bounded by `bound`) until the leader's configuration has `voters` voters and
    /// every node of this cluster is among them.
    pub fn wait_for_voters(&mut self, voters: usize, bound: Duration) -> Result<(), LaunchError> {
        let start = Instant::now();
        let mut last = String::from("no leader answered CLUSTER yet");
        loop {
            if let Ok(members) = self.members() {
                let n_voters = members.iter().filter(|m| m.role == Role::Voter).count();
                let ours = self.addresses();
                let all_ours = members.iter().all(|m| ours.iter().any(|a| a.to_string() == m.address));
                if n_voters == voters && all_ours {
                    tracing::info!(voters, waited = ?start.elapsed(), "cluster configuration ready");
                    return Ok(());
                }
                last = format!("configuration: {members:?}");
            }
            if start.elapsed() >= bound {
                return Err(self.timeout(&format!("{voters} voters"), start.elapsed(), last));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits (bounded by `bound`) until the leader's configuration satisfies `formed`, failing
    /// early if a node exits. `what` names the configuration wanted (in the timeout error).
    /// Launchers call this once every node was started.
    pub(crate) fn wait_formed(
        &mut self,
        what: &str,
        bound: Duration,
        formed: impl Fn(&[ServerInfo]) -> bool,
    ) -> Result<(), LaunchError> {
        let start = Instant::now();
        let mut observed = String::from("nothing yet");
        loop {
            for i in 0..self.nodes.len() {
                if !self.is_running(i) {
                    return Err(LaunchError::NodeExited {
                        node: i,
                        address: self.address(i),
                        during: "cluster formation".into(),
                        log_tail: self.nodes[i].log_tail(4096),
                    });
                }
            }
            if let Ok(members) = self.members() {
                if formed(&members) {
                    tracing::info!(launcher = self.launcher, nodes = self.nodes.len(), waited = ?start.elapsed(),
                        "cluster formed");
                    return Ok(());
                }
                observed = format!("configuration: {members:?}");
            }
            if start.elapsed() >= bound {
                return Err(self.timeout(what, start.elapsed(), observed));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Builds a timeout error carrying the observation and each node's log tail.
    pub fn timeout(&self, what: &str, waited: Duration, observed: String) -> LaunchError {
        let mut detail = format!("last observation: {observed}");
        for (i, node) in self.nodes.iter().enumerate() {
            detail.push_str(&format!("\n--- node {i} ({}) log tail ---\n{}", node.address(), node.log_tail(2048)));
        }
        LaunchError::Timeout { what: what.to_owned(), waited, detail }
    }

    fn check_index(&self, i: usize) -> Result<(), LaunchError> {
        if i < self.nodes.len() {
            Ok(())
        } else {
            Err(LaunchError::Invalid(format!("node {i} out of range: cluster has {} nodes", self.nodes.len())))
        }
    }
}

/// Waits (bounded by `bound`) until `node`, started alone to bootstrap a cluster as node 0,
/// names itself leader (the other nodes join it then); fails early if it exits.
pub(crate) fn wait_bootstrap_leader(node: &mut dyn NodeProcess, bound: Duration) -> Result<(), LaunchError> {
    let seed = node.address().to_string();
    let what = format!("node 0 ({seed}) to elect itself leader");
    wait_node(node, 0, "bootstrap", &what, bound, |r| matches!(r, Ok(Some(l)) if *l == seed))
}

/// Waits (bounded by `bound`) until restarted node `index` answers requests (LEADER); fails
/// early if it exits.
pub(crate) fn wait_restarted(node: &mut dyn NodeProcess, index: usize, bound: Duration) -> Result<(), LaunchError> {
    let what = format!("restarted node {index} ({}) to answer requests", node.address());
    wait_node(node, index, "restart", &what, bound, |r| r.is_ok())
}

/// Polls node `index`'s answer to LEADER until `ready` accepts it, bounded by `bound`; fails
/// early (`during` names the phase) if the node exits, and on timeout names `what`.
fn wait_node(
    node: &mut dyn NodeProcess,
    index: usize,
    during: &str,
    what: &str,
    bound: Duration,
    ready: impl Fn(&std::io::Result<Option<String>>) -> bool,
) -> Result<(), LaunchError> {
    let address = node.address();
    let start = Instant::now();
    loop {
        if !node.is_running() {
            return Err(LaunchError::NodeExited {
                node: index,
                address,
                during: during.to_owned(),
                log_tail: node.log_tail(4096),
            });
        }
        if ready(&probe::leader(address, PROBE_TIMEOUT)) {
            return Ok(());
        }
        if start.elapsed() >= bound {
            return Err(LaunchError::Timeout {
                what: what.to_owned(),
                waited: start.elapsed(),
                detail: node.log_tail(4096),
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The configuration has exactly `n_nodes` members, `voters` of them voters (the rest
/// standbys or spares, as the cluster's role management leaves them).
pub(crate) fn has_voters(members: &[ServerInfo], n_nodes: usize, voters: usize) -> bool {
    members.len() == n_nodes && members.iter().filter(|m| m.role == Role::Voter).count() == voters
}

/// Polls `condition` every [`POLL_INTERVAL`] until it returns `Some`, or fails with a timeout
/// error naming `what` after `bound`.
pub fn wait_until<T>(what: &str, bound: Duration, mut condition: impl FnMut() -> Option<T>) -> Result<T, LaunchError> {
    let start = Instant::now();
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if start.elapsed() >= bound {
            return Err(LaunchError::Timeout { what: what.to_owned(), waited: start.elapsed(), detail: String::new() });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that is never running; enough for the cluster's bookkeeping.
    struct Stopped(SocketAddr);

    impl NodeProcess for Stopped {
        fn address(&self) -> SocketAddr {
            self.0
        }
        fn kill(&mut self) -> Result<(), LaunchError> {
            Err(LaunchError::Invalid("not running".into()))
        }
        fn restart(&mut self) -> Result<(), LaunchError> {
            Err(LaunchError::Invalid("cannot start".into()))
        }
        fn is_running(&mut self) -> bool {
            false
        }
        fn log_tail(&self, _: usize) -> String {
            "last log line".into()
        }
    }

    fn stopped_cluster(n: u8) -> Cluster {
        let nodes = (0..n)
            .map(|i| Box::new(Stopped(SocketAddr::from(([127, 0, 0, 2 + i], 9001)))) as Box<dyn NodeProcess>)
            .collect();
        Cluster::from_nodes("test", nodes)
    }

    #[test]
    fn urls_name_every_node() {
        let three = stopped_cluster(3);
        assert_eq!(three.url("app.db"), "dqlite://127.0.0.2:9001/app.db?peers=127.0.0.3:9001,127.0.0.4:9001");
        assert_eq!(
            three.url_with("app.db", "leader_timeout=30s"),
            "dqlite://127.0.0.2:9001/app.db?peers=127.0.0.3:9001,127.0.0.4:9001&leader_timeout=30s"
        );
        let one = stopped_cluster(1);
        assert_eq!(one.url("a.db"), "dqlite://127.0.0.2:9001/a.db");
        assert_eq!(one.url_with("a.db", "x=1"), "dqlite://127.0.0.2:9001/a.db?x=1");
    }

    #[test]
    fn no_leader_among_stopped_nodes_and_bad_indexes_are_errors() {
        let mut cluster = stopped_cluster(2);
        assert_eq!(cluster.leader(), None);
        let err = cluster.wait_for_leader(Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("last log line"), "{err}");
        assert!(matches!(cluster.kill(2), Err(LaunchError::Invalid(_))));
        assert!(matches!(cluster.restart(9), Err(LaunchError::Invalid(_))));
        assert!(cluster.members().is_err());
    }

    #[test]
    fn unknown_launcher_names_the_known_ones() {
        let err = launcher_by_name("own-nodes-not-yet").err().expect("unknown launcher");
        let message = err.to_string();
        assert!(message.contains("own-nodes-not-yet") && message.contains("real"), "{message}");
    }

    #[test]
    fn wait_until_is_bounded_and_says_what_it_waited_for() {
        let start = Instant::now();
        let err = wait_until("the impossible", Duration::from_millis(120), || None::<()>).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(120));
        assert!(err.to_string().contains("the impossible"), "{err}");
        let mut calls = 0;
        assert_eq!(
            wait_until("third call", Duration::from_secs(5), || {
                calls += 1;
                (calls == 3).then_some(calls)
            })
            .unwrap(),
            3
        );
    }
}
