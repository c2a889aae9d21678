//! A seeded in-process cluster harness (feature `harness`): N nodes, each with its own
//! [`MemDisk`] (which can crash losing unsynced data), connected by a [`MemNetwork`], generic over
//! the state machine through a factory closure. Real time with tokio; every wait is bounded.
//!
//! Randomized tests take their seed from [`seed_from_env`], which prints it first so a failure
//! can be replayed.
//!
//! [`KvStateMachine`] is a small test state machine (a key-value map plus a digest of every
//! command applied, with a simulated durable checkpoint that survives crashes).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dqlite_raft::{Configuration, Entry, LogIndex, NodeId, Role, Server, StateRole, Term};

use super::memory::MemNetwork;
use super::{inbox, LateReplicator, Runtime, RuntimeError, RuntimeHandle, RuntimeOptions};
use crate::replication::{ApplyError, ProposeError, Proposed, Replicator, StateMachine};
use crate::storage::backend::{CrashMode, MemBackend, MemDisk};

/// Reads the seed from environment variable `var` (decimal), else uses `default`; prints it
/// (test support: this is how a failing seed is reported and replayed).
pub fn seed_from_env(var: &str, default: u64) -> u64 {
    let seed = std::env::var(var).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default);
    eprintln!("seed = {seed} (replay with {var}={seed})");
    seed
}

/// A small deterministic PRNG (SplitMix64) for tests driven by a seed.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// Seeded.
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

struct HNode {
    disk: MemDisk,
    opts: RuntimeOptions,
    handle: Option<RuntimeHandle>,
    replicator: Arc<LateReplicator>,
}

/// An in-process cluster.
pub struct Cluster<S: StateMachine, F: Fn(NodeId, Arc<dyn Replicator>) -> S + Send + Sync + 'static> {
    net: MemNetwork,
    nodes: BTreeMap<NodeId, HNode>,
    factory: F,
    seed: u64,
    tune: Box<dyn Fn(&mut RuntimeOptions) + Send + Sync>,
}

/// Address given to node `id` in the configuration.
pub fn address_of(id: NodeId) -> String {
    format!("mem://{id}")
}

impl<S: StateMachine, F: Fn(NodeId, Arc<dyn Replicator>) -> S + Send + Sync + 'static> Cluster<S, F> {
    /// Starts `n` nodes (ids 1..=n) bootstrapped as voters. `tune` adjusts each node's options.
    pub async fn start(
        n: u64,
        seed: u64,
        factory: F,
        tune: impl Fn(&mut RuntimeOptions) + Send + Sync + 'static,
    ) -> Result<Self, RuntimeError> {
        let mut conf = Configuration::new();
        for i in 1..=n {
            conf.upsert(Server { id: NodeId(i), address: address_of(NodeId(i)), role: Role::Voter });
        }
        let mut c = Cluster { net: MemNetwork::new(seed), nodes: BTreeMap::new(), factory, seed, tune: Box::new(tune) };
        for i in 1..=n {
            c.launch(NodeId(i), Some(conf.clone())).await?;
        }
        Ok(c)
    }

    /// Starts a new node with empty storage that waits to be added (then call `add` on the
    /// leader's handle).
    pub async fn launch_blank(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        self.launch(id, None).await
    }

    async fn launch(&mut self, id: NodeId, bootstrap: Option<Configuration>) -> Result<(), RuntimeError> {
        let mut opts = RuntimeOptions::new(id, address_of(id));
        opts.rng_seed = self.seed;
        opts.bootstrap = bootstrap;
        // Deterministic segment preparation (no background thread).
        opts.storage.log.background_preallocation = false;
        opts.storage.log.segment_size_bytes = 64 * 1024;
        (self.tune)(&mut opts);
        let disk = MemDisk::new();
        self.nodes.insert(id, HNode { disk, opts, handle: None, replicator: LateReplicator::new() });
        self.restart(id).await
    }

    /// (Re)starts node `id` on its disk, with a fresh state machine from the factory.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let Some(node) = self.nodes.get_mut(&id) else { return Err(RuntimeError::Stopped) };
        let (tx, rx) = inbox(node.opts.inbox_queue);
        let backend: Arc<dyn crate::storage::backend::Backend> = Arc::new(node.disk.backend());
        let replicator: Arc<dyn Replicator> = node.replicator.clone();
        let sm = (self.factory)(id, replicator);
        let h = Runtime::start(node.opts.clone(), backend, sm, self.net.transport(id), rx).await?;
        self.net.attach(id, tx);
        node.replicator.bind(Some(h.clone()));
        node.handle = Some(h);
        Ok(())
    }

    /// Crashes node `id`: its disk fails every call from now on, the node stops at once, and the
    /// disk is rebuilt as a power cut would leave it (`mode`).
    pub async fn crash(&mut self, id: NodeId, mode: CrashMode) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.disk.crash_now();
        node.replicator.bind(None);
        self.net.detach(id);
        if let Some(h) = node.handle.take() {
            h.kill().await;
        }
        node.disk.restart(mode);
    }

    /// Stops node `id` gracefully (it hands leadership over first).
    pub async fn shutdown(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.replicator.bind(None);
        if let Some(h) = node.handle.take() {
            h.shutdown().await;
        }
        self.net.detach(id);
    }

    /// Stops every node.
    pub async fn shutdown_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(n) = self.nodes.get_mut(&id) {
                n.replicator.bind(None);
                if let Some(h) = n.handle.take() {
                    h.kill().await;
                }
            }
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The network.
    pub fn net(&self) -> &MemNetwork {
        &self.net
    }

    /// The ids of all nodes (running or not).
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The ids of the running nodes.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(_, n)| n.handle.is_some()).map(|(i, _)| *i).collect()
    }

    /// Node `id`'s handle, if it is running.
    pub fn handle(&self, id: NodeId) -> Option<&RuntimeHandle> {
        self.nodes.get(&id).and_then(|n| n.handle.as_ref())
    }

    /// Node `id`'s disk.
    pub fn disk(&self, id: NodeId) -> Option<&MemDisk> {
        self.nodes.get(&id).map(|n| &n.disk)
    }

    /// Waits until the running nodes (in `among`, or all if empty) agree on one leader that is
    /// among them and leads in their term.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RuntimeError> {
        let ids = self.running();
        self.wait_for_leader_among(&ids, timeout).await
    }

    /// As [`Cluster::wait_for_leader`], for the nodes `ids`.
    pub async fn wait_for_leader_among(&self, ids: &[NodeId], timeout: Duration) -> Result<NodeId, RuntimeError> {
        let check = || {
            let roles: Vec<_> = ids.iter().filter_map(|i| self.handle(*i).map(|h| (*i, h.role()))).collect();
            let leader = roles.iter().find(|(_, r)| r.role == StateRole::Leader).map(|(i, r)| (*i, r.term))?;
            roles.iter().all(|(_, r)| r.leader == Some(leader.0) && r.term == leader.1).then_some(leader.0)
        };
        wait_until(timeout, || async { check() }).await.ok_or(RuntimeError::Timeout)
    }

    /// Proposes `data` on whichever node leads, retrying elsewhere on `NotLeader` until
    /// `timeout`.
    pub async fn propose(&self, data: Vec<u8>, timeout: Duration) -> Result<(NodeId, Proposed), ProposeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let leader = self
                .running()
                .into_iter()
                .find(|i| self.handle(*i).is_some_and(|h| h.role().role == StateRole::Leader));
            let mut last = ProposeError::NotLeader { leader: None };
            if let Some(l) = leader {
                if let Some(h) = self.handle(l) {
                    match h.propose_async(data.clone()).await {
                        Ok(p) => return Ok((l, p)),
                        Err(e @ ProposeError::NotLeader { .. }) => last = e,
                        Err(e) => return Err(e),
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Polls `cond` every few milliseconds until it returns `Some`, or `timeout` passes.
pub async fn wait_until<T, Fut: Future<Output = Option<T>>>(
    timeout: Duration,
    mut cond: impl FnMut() -> Fut,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ----- the test state machine ------------------------------------------------------------

/// What a [`KvStateMachine`] holds (shared with the test for inspection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvState {
    /// `key -> value` from commands `key=value` (a command without `=` sets itself to "").
    pub map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The last index applied.
    pub applied: LogIndex,
    /// A digest of every `(index, command)` applied, in order.
    pub digest: u64,
    /// Commands applied (including those inside a restored snapshot).
    pub commands: u64,
}

impl KvState {
    fn apply(&mut self, index: LogIndex, data: &[u8]) {
        let (k, v) = match data.iter().position(|b| *b == b'=') {
            Some(p) => (data[..p].to_vec(), data[p + 1..].to_vec()),
            None => (data.to_vec(), Vec::new()),
        };
        self.map.insert(k, v);
        let mut h = self.digest ^ index.0.wrapping_mul(0x100_0000_01B3);
        for b in data {
            h = (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
        }
        self.digest = h;
        self.commands += 1;
        self.applied = index;
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.applied.0.to_le_bytes());
        out.extend_from_slice(&self.digest.to_le_bytes());
        out.extend_from_slice(&self.commands.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    fn decode(mut b: &[u8]) -> Option<KvState> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (x, y) = b.split_at(n);
            *b = y;
            Some(x)
        }
        let u64at = |b: &mut &[u8]| take(b, 8).map(|x| u64::from_le_bytes(x.try_into().unwrap_or([0; 8])));
        let u32at = |b: &mut &[u8]| take(b, 4).map(|x| u32::from_le_bytes(x.try_into().unwrap_or([0; 4])));
        let applied = LogIndex(u64at(&mut b)?);
        let digest = u64at(&mut b)?;
        let commands = u64at(&mut b)?;
        let n = u64at(&mut b)?;
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let kl = u32at(&mut b)? as usize;
            let k = take(&mut b, kl)?.to_vec();
            let vl = u32at(&mut b)? as usize;
            let v = take(&mut b, vl)?.to_vec();
            map.insert(k, v);
        }
        b.is_empty().then_some(KvState { map, applied, digest, commands })
    }
}

/// The durable part of a [`KvStateMachine`] (a simulated checkpoint file that survives a crash).
#[derive(Debug, Default)]
pub struct KvDurable {
    image: Option<Vec<u8>>,
}

/// Role events a [`KvStateMachine`] saw, with the applied index at the time.
pub type RoleLog = Vec<(StateRole, Term, Option<NodeId>, LogIndex)>;

/// A key-value test state machine. Its live state is shared with the test through
/// [`KvStateMachine::state`]; every `checkpoint_every` commands it copies itself to its
/// [`KvDurable`] (then `durable_index` moves).
#[derive(Debug)]
pub struct KvStateMachine {
    state: Arc<Mutex<KvState>>,
    durable: Arc<Mutex<KvDurable>>,
    durable_index: LogIndex,
    roles: Arc<Mutex<RoleLog>>,
    checkpoint_every: u64,
    since_checkpoint: u64,
    restores: Arc<Mutex<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a test keeps of one node's [`KvStateMachine`] across its restarts.
#[derive(Debug, Clone, Default)]
pub struct KvSlot {
    /// The live state of the current incarnation.
    pub state: Arc<Mutex<KvState>>,
    /// The durable checkpoint.
    pub durable: Arc<Mutex<KvDurable>>,
    /// Role events of the current incarnation.
    pub roles: Arc<Mutex<RoleLog>>,
    /// Snapshot restores (all incarnations).
    pub restores: Arc<Mutex<u64>>,
}

impl KvSlot {
    /// A copy of the live state.
    pub fn snapshot(&self) -> KvState {
        lock(&self.state).clone()
    }
    /// How many snapshot restores happened.
    pub fn restores(&self) -> u64 {
        *lock(&self.restores)
    }
    /// Role events seen by the current incarnation.
    pub fn roles(&self) -> RoleLog {
        lock(&self.roles).clone()
    }
}

/// Slots for a set of nodes, and a factory that opens a [`KvStateMachine`] from them (a fresh
/// live state recovered from the durable checkpoint, as after a process restart).
#[derive(Debug, Clone, Default)]
pub struct KvCluster {
    slots: Arc<Mutex<BTreeMap<NodeId, KvSlot>>>,
    checkpoint_every: u64,
}

impl KvCluster {
    /// State machines that checkpoint every `checkpoint_every` commands (0: never).
    pub fn new(checkpoint_every: u64) -> KvCluster {
        KvCluster { slots: Arc::default(), checkpoint_every }
    }

    /// The slot of node `id`.
    pub fn slot(&self, id: NodeId) -> KvSlot {
        lock(&self.slots).entry(id).or_default().clone()
    }

    /// A factory for [`Cluster::start`].
    pub fn factory(&self) -> impl Fn(NodeId, Arc<dyn Replicator>) -> KvStateMachine + Send + Sync + 'static {
        let me = self.clone();
        move |id, _replicator| {
            let fresh = KvSlot {
                state: Arc::default(),
                roles: Arc::default(),
                durable: me.slot(id).durable,
                restores: me.slot(id).restores,
            };
            lock(&me.slots).insert(id, fresh.clone());
            KvStateMachine::open(fresh, me.checkpoint_every)
        }
    }
}

impl KvStateMachine {
    /// Opens from `slot` (recovering the durable checkpoint into the live state).
    pub fn open(slot: KvSlot, checkpoint_every: u64) -> KvStateMachine {
        let recovered = lock(&slot.durable).image.as_deref().and_then(KvState::decode).unwrap_or_default();
        let durable_index = recovered.applied;
        *lock(&slot.state) = recovered;
        KvStateMachine {
            state: slot.state,
            durable: slot.durable,
            durable_index,
            roles: slot.roles,
            checkpoint_every,
            since_checkpoint: 0,
            restores: slot.restores,
        }
    }

    fn checkpoint(&mut self) {
        let s = lock(&self.state);
        lock(&self.durable).image = Some(s.encode());
        self.durable_index = s.applied;
        self.since_checkpoint = 0;
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        {
            let mut s = lock(&self.state);
            if entry.index <= s.applied {
                return Err(ApplyError { index: entry.index, reason: format!("already applied up to {}", s.applied) });
            }
            s.apply(entry.index, &entry.data);
        }
        self.since_checkpoint += 1;
        if self.checkpoint_every > 0 && self.since_checkpoint >= self.checkpoint_every {
            self.checkpoint();
        }
        Ok(())
    }

    fn role_changed(&mut self, role: StateRole, term: Term, leader: Option<NodeId>) {
        let applied = lock(&self.state).applied;
        lock(&self.roles).push((role, term, leader, applied));
    }

    fn applied_index(&self) -> LogIndex {
        lock(&self.state).applied
    }

    fn durable_index(&self) -> LogIndex {
        self.durable_index
    }

    fn snapshot(&mut self, out: &mut dyn Write) -> Result<LogIndex, ApplyError> {
        let s = lock(&self.state);
        out.write_all(&s.encode()).map_err(|e| ApplyError { index: s.applied, reason: e.to_string() })?;
        Ok(s.applied)
    }

    fn restore(&mut self, index: LogIndex, data: &mut dyn Read) -> Result<(), ApplyError> {
        let mut buf = Vec::new();
        data.read_to_end(&mut buf).map_err(|e| ApplyError { index, reason: e.to_string() })?;
        let st = KvState::decode(&buf).ok_or(ApplyError { index, reason: "malformed kv snapshot".into() })?;
        if st.applied != index {
            return Err(ApplyError { index, reason: format!("snapshot holds index {}", st.applied) });
        }
        *lock(&self.state) = st;
        *lock(&self.restores) += 1;
        // A restored image is durable (as a database file written by restore would be).
        self.checkpoint();
        Ok(())
    }
}

/// The distinct values of `f` over `items` (handy to assert that all nodes agree).
pub fn distinct<T, K: Ord>(items: impl IntoIterator<Item = T>, f: impl Fn(&T) -> K) -> BTreeSet<K> {
    items.into_iter().map(|x| f(&x)).collect()
}

#[allow(dead_code)]
fn _assert_send() {
    fn s<T: Send>() {}
    s::<KvStateMachine>();
    s::<MemBackend>();
}
