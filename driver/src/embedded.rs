//! Embedded nodes: `data=DIR` URLs run (or attach to) a dqlite-rs node inside this process.
//!
//! ```text
//!  dqlite://HOST:PORT/DB?data=DIR[&join=H:P,…]   a node of this process listening on HOST:PORT
//!  dqlite:///DB?data=DIR                         a single node without a socket
//!
//!  connect ─► dqlite_node::embedded::attach_or_start(DIR)   (one node per DIR per process)
//!     ├─ local node is leader ─► WireStream over an in-process pipe ─► the node's server
//!     └─ otherwise ────────────► the usual TCP leader search over HOST, peers and join seeds
//! ```
//!
//! The in-process path speaks the same protocol as the wire (the pipe's far end is served by
//! the node's connection handler, exactly like an accepted socket), so semantics and errors are
//! identical; it only skips the kernel. A connection made while another node leads goes over
//! TCP; when leadership changes, connections reconnect (transparently, outside transactions)
//! and land on the local node again once it leads.
//!
//! Without the `embedded` feature the options still parse, and connecting fails with an error
//! that names the feature: remote-only users do not compile the engine.

use std::path::PathBuf;

use sqlx_core::percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use sqlx_core::{Error, Url};

use crate::options::parse::parse_host_port;
use crate::options::{DqliteConnectOptions, NodeAddress};

/// The embedded part of a [`DqliteConnectOptions`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmbeddedSpec {
    /// The node's data directory.
    pub data: PathBuf,
    /// Whether the node listens on the URL's HOST:PORT (false: `dqlite:///DB?data=DIR`).
    pub listen: bool,
    /// Nodes to join through when the directory holds no node yet.
    pub join: Vec<NodeAddress>,
}

fn config_err(msg: impl Into<String>) -> Error {
    Error::Configuration(msg.into().into())
}

impl EmbeddedSpec {
    /// The `data=` / `join=` options of `url`, if it has `data=`.
    pub(crate) fn from_url(url: &Url, has_host: bool) -> Result<Option<Self>, Error> {
        let mut data = None;
        let mut join = Vec::new();
        for (key, value) in url.query_pairs() {
            match &*key {
                "data" if value.is_empty() => return Err(config_err("`data=` names no directory")),
                "data" => data = Some(PathBuf::from(&*value)),
                "join" => {
                    for p in value.split(',').filter(|p| !p.trim().is_empty()) {
                        join.push(parse_host_port(p)?);
                    }
                }
                _ => {}
            }
        }
        match data {
            Some(data) => {
                if !has_host && !join.is_empty() {
                    return Err(config_err(
                        "`join=` needs a listening node: use dqlite://HOST:PORT/DB?data=DIR&join=… \
                         (dqlite:///DB?data=DIR is a single node without a socket)",
                    ));
                }
                Ok(Some(EmbeddedSpec { data, listen: has_host, join }))
            }
            None if !join.is_empty() => Err(config_err("`join=` needs `data=DIR` (an embedded node)")),
            None => Ok(None),
        }
    }

    pub(crate) fn push_url_options(&self, push: &mut dyn FnMut(&str, &str)) {
        let data = self.data.to_string_lossy();
        push("data", &utf8_percent_encode(&data, NON_ALPHANUMERIC).to_string());
        if !self.join.is_empty() {
            let join: Vec<String> = self.join.iter().map(ToString::to_string).collect();
            push("join", &join.join(","));
        }
    }
}

impl DqliteConnectOptions {
    /// Run (or attach to) a node of this process on data directory `dir` (`data=` in the URL).
    /// With the URL's host and port it listens there; after [`no_socket`](Self::no_socket) it
    /// is a single node reached only in process.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        let join = self.embedded.take().map(|e| e.join).unwrap_or_default();
        self.embedded = Some(EmbeddedSpec { data: dir.into(), listen: true, join });
        self
    }

    /// The embedded node has no listening socket (`dqlite:///DB?data=DIR`). Needs
    /// [`data_dir`](Self::data_dir) first.
    pub fn no_socket(mut self) -> Self {
        if let Some(e) = &mut self.embedded {
            e.listen = false;
            e.join.clear();
        }
        self
    }

    /// Nodes a fresh embedded node joins through (`join=` in the URL).
    pub fn join(mut self, host: impl Into<String>, port: u16) -> Self {
        if let Some(e) = &mut self.embedded {
            e.join.push(NodeAddress::new(host, port));
        }
        self
    }

    /// The embedded node's data directory, if these options run one.
    pub fn get_data_dir(&self) -> Option<&std::path::Path> {
        self.embedded.as_ref().map(|e| e.data.as_path())
    }
}

/// The in-process node of these options, started or attached.
#[cfg(feature = "embedded")]
pub(crate) async fn node(opts: &DqliteConnectOptions, spec: &EmbeddedSpec) -> Result<dqlite_node::EmbeddedNode, Error> {
    // The URL's busy timeout is also the node's (how long its writers wait for a database's
    // write lock) when this connection starts the node.
    let mut builder = dqlite_node::NodeBuilder::new(&spec.data).busy_timeout(opts.busy_timeout);
    if spec.listen {
        builder = builder.address(opts.host.to_string()).join(spec.join.iter().map(ToString::to_string));
    }
    dqlite_node::embedded::attach_or_start(builder)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(format!("embedded dqlite node: {e}"))))
}

#[cfg(not(feature = "embedded"))]
pub(crate) fn unavailable(spec: &EmbeddedSpec) -> Error {
    config_err(format!(
        "`data={}` runs an embedded node, which needs sqlx-dqlite's `embedded` feature (on in the \
         `dqlite` facade crate)",
        spec.data.display()
    ))
}
