//! The [`ClusterBackend`] of a real node: the Raft runtime's [`RuntimeHandle`].
//!
//! Roles translate between the wire (0 voter, 1 standby, 2 spare) and the core's enum; runtime
//! errors become dqlite's failures (not leader → 10250, a concurrent configuration change →
//! `SQLITE_BUSY`, other Raft refusals → `SQLITE_ERROR` with the reason). DUMP reads the database
//! files from the SQLite layer's directory (`DIR/db/`), main file then WAL, as dqlite 1.11 does.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dqlite_raft::{NodeId, StateRole};
use dqlite_wire::codes::{
    SQLITE_BUSY, SQLITE_ERROR, SQLITE_IOERR, SQLITE_IOERR_FOLLOWER_STALE, SQLITE_IOERR_LEADERSHIP_LOST,
    SQLITE_IOERR_NOT_LEADER,
};
use dqlite_wire::{failure, Role};

use super::backend::{BackendError, ClusterBackend, DumpFile, Member};
use crate::runtime::{RuntimeError, RuntimeHandle};

/// The wire role of a core role.
pub fn wire_role(role: dqlite_raft::Role) -> Role {
    match role {
        dqlite_raft::Role::Voter => Role::Voter,
        dqlite_raft::Role::Standby => Role::Standby,
        dqlite_raft::Role::Spare => Role::Spare,
    }
}

/// The core role of a wire role.
pub fn core_role(role: Role) -> dqlite_raft::Role {
    match role {
        Role::Voter => dqlite_raft::Role::Voter,
        Role::Standby => dqlite_raft::Role::Standby,
        Role::Spare => dqlite_raft::Role::Spare,
    }
}

/// The FAILURE a runtime error becomes.
pub fn runtime_failure(e: RuntimeError) -> BackendError {
    match e {
        RuntimeError::NotLeader { .. } => BackendError::new(failure::NOT_LEADER.code, failure::NOT_LEADER.message),
        RuntimeError::LeadershipLost => {
            BackendError::new(SQLITE_IOERR_LEADERSHIP_LOST, failure::LEADERSHIP_LOST.message)
        }
        RuntimeError::Raft(r @ (dqlite_raft::Error::ConfChangeInProgress | dqlite_raft::Error::TransferInProgress)) => {
            BackendError::new(SQLITE_BUSY, r.to_string())
        }
        RuntimeError::Raft(r) => BackendError::new(SQLITE_ERROR, r.to_string()),
        RuntimeError::TransferAborted { .. } | RuntimeError::Timeout => {
            BackendError::new(SQLITE_ERROR, "leadership transfer failed")
        }
        other => BackendError::new(SQLITE_IOERR, other.to_string()),
    }
}

/// How long a linearizable read waits for its ReadIndex round (leadership confirmation and
/// apply) before failing with not-leader.
pub const READ_BARRIER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A [`ClusterBackend`] over a running node's [`RuntimeHandle`].
#[derive(Debug)]
pub struct RuntimeCluster {
    handle: RuntimeHandle,
    db_dir: PathBuf,
    weight: AtomicU64,
    failure_domain: u64,
    /// Set when the node starts a graceful stop: from then on it neither names itself leader
    /// nor takes requests that need the leader, so clients go looking for the next one while
    /// leadership is handed over.
    stopping: Arc<AtomicBool>,
}

impl RuntimeCluster {
    /// The backend of the node behind `handle`, whose databases live in `db_dir`.
    pub fn new(handle: RuntimeHandle, db_dir: PathBuf) -> Self {
        RuntimeCluster { handle, db_dir, weight: AtomicU64::new(0), failure_domain: 0, stopping: Arc::default() }
    }

    /// The runtime handle.
    pub fn handle(&self) -> &RuntimeHandle {
        &self.handle
    }
}

impl RuntimeCluster {
    /// The flag that marks a graceful stop in progress (see the field's docs); the node sets it
    /// before it asks the runtime to hand leadership over.
    pub fn stopping_flag(&self) -> Arc<AtomicBool> {
        self.stopping.clone()
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

impl ClusterBackend for RuntimeCluster {
    fn node_id(&self) -> u64 {
        self.handle.id().0
    }

    fn leader_term(&self) -> Option<u64> {
        let role = self.handle.role();
        (role.role == StateRole::Leader && !self.handle.is_stopped() && !self.is_stopping()).then_some(role.term.0)
    }

    fn leader(&self) -> Option<(u64, String)> {
        if self.handle.is_stopped() {
            // A stopped runtime's last view is stale (it may name itself): know nothing.
            return None;
        }
        let (id, address) = self.handle.leader()?;
        if id == self.handle.id() && self.is_stopping() {
            return None;
        }
        if address.is_empty() {
            // Known id, unknown address: look it up in the configuration.
            let conf = self.handle.configuration();
            let address = conf.get(id)?.address.clone();
            return Some((id.0, address));
        }
        Some((id.0, address))
    }

    fn is_voter(&self) -> bool {
        self.handle.configuration().is_voter(self.handle.id())
    }

    fn members(&self) -> Vec<Member> {
        self.handle
            .configuration()
            .servers()
            .iter()
            .map(|s| Member { id: s.id.0, address: s.address.clone(), role: wire_role(s.role) })
            .collect()
    }

    async fn add(&self, id: u64, address: String) -> Result<(), BackendError> {
        // dqlite adds as spare; clients ASSIGN the role they want next.
        self.handle.add(NodeId(id), address, dqlite_raft::Role::Spare).await.map(|_| ()).map_err(runtime_failure)
    }

    async fn assign(&self, id: u64, role: Role) -> Result<(), BackendError> {
        match self.handle.assign(NodeId(id), core_role(role)).await {
            Ok(_) => Ok(()),
            // Assigning the role a node already has is not an error for dqlite clients.
            Err(RuntimeError::Raft(dqlite_raft::Error::RoleUnchanged(_))) => Ok(()),
            Err(e) => Err(runtime_failure(e)),
        }
    }

    async fn remove(&self, id: u64) -> Result<(), BackendError> {
        self.handle.remove(NodeId(id)).await.map(|_| ()).map_err(runtime_failure)
    }

    async fn transfer(&self, id: u64) -> Result<(), BackendError> {
        let target = (id != 0).then_some(NodeId(id));
        self.handle.transfer(target).await.map(|_| ()).map_err(runtime_failure)
    }

    fn describe(&self) -> (u64, u64) {
        (self.failure_domain, self.weight.load(Ordering::Relaxed))
    }

    fn set_weight(&self, weight: u64) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    async fn read_barrier(&self) -> Result<(), BackendError> {
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.handle.read_index()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(runtime_failure(e)),
            Err(_) => Err(BackendError::new(
                SQLITE_IOERR_NOT_LEADER,
                "leadership not confirmed by a quorum in time for a linearizable read",
            )),
        }
    }

    async fn follower_read(&self, max_staleness: std::time::Duration) -> Result<(), BackendError> {
        let stale = |why: String| BackendError::new(SQLITE_IOERR_FOLLOWER_STALE, format!("follower too stale: {why}"));
        if self.handle.is_stopped() {
            return Err(stale("this node is stopped".into()));
        }
        // On a follower the wait is bounded by `follower_read` itself; on the leader it is a
        // ReadIndex round, bounded here as a linearizable read is.
        match tokio::time::timeout(READ_BARRIER_TIMEOUT, self.handle.follower_read(max_staleness)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RuntimeError::FollowerStale(reason))) => Err(stale(reason.to_string())),
            // Leadership moved while the leader confirmed it: nothing ran, the read may be retried.
            Ok(Err(RuntimeError::NotLeader { .. } | RuntimeError::LeadershipLost | RuntimeError::Stopped)) => {
                Err(stale("leadership changed during the read".into()))
            }
            Ok(Err(e)) => Err(runtime_failure(e)),
            Err(_) => Err(stale("leadership not confirmed by a quorum in time".into())),
        }
    }

    async fn dump(&self, name: String) -> Result<Vec<DumpFile>, BackendError> {
        if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
            return Ok(Vec::new());
        }
        let dir = self.db_dir.clone();
        tokio::task::spawn_blocking(move || {
            let main = match std::fs::read(dir.join(&name)) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(BackendError::new(SQLITE_IOERR, format!("reading {name}: {e}"))),
            };
            let wal_name = format!("{name}-wal");
            let wal = match std::fs::read(dir.join(&wal_name)) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(BackendError::new(SQLITE_IOERR, format!("reading {wal_name}: {e}"))),
            };
            Ok(vec![DumpFile { name, data: main }, DumpFile { name: wal_name, data: wal }])
        })
        .await
        .map_err(|e| BackendError::new(SQLITE_IOERR, format!("dump task failed: {e}")))?
    }
}
