//! An in-memory [`Transport`] with fault injection: a [`MemNetwork`] connects the inboxes of
//! in-process nodes; it can drop messages at a rate, cut links between sets of nodes, delay
//! delivery, and pass messages through a test's filter (to corrupt or drop chosen ones).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dqlite_raft::{Message, NodeId};

use super::InboxSender;
use crate::replication::Transport;

/// A filter over messages in flight: return `false` to drop the message; it may also change it.
pub type MessageFilter = Box<dyn FnMut(&mut Message) -> bool + Send>;

struct NetState {
    inboxes: HashMap<NodeId, InboxSender>,
    /// Links cut, as unordered pairs `(lo, hi)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Drop probability in parts per million.
    drop_ppm: u32,
    delay: Duration,
    jitter: Duration,
    rng: u64,
    filter: Option<MessageFilter>,
}

impl NetState {
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Counters of a [`MemNetwork`].
#[derive(Debug, Default)]
pub struct NetStats {
    /// Messages delivered to an inbox.
    pub delivered: AtomicU64,
    /// Messages dropped (fault, cut link, unknown peer, full inbox, filter).
    pub dropped: AtomicU64,
}

/// The shared in-memory network of a set of in-process nodes (clone freely).
#[derive(Clone)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
    stats: Arc<NetStats>,
}

impl std::fmt::Debug for MemNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MemNetwork").field("nodes", &s.inboxes.len()).field("cut", &s.cut).finish()
    }
}

impl MemNetwork {
    /// A network with no faults; `seed` drives the drop and jitter choices.
    pub fn new(seed: u64) -> MemNetwork {
        MemNetwork {
            state: Arc::new(Mutex::new(NetState {
                inboxes: HashMap::new(),
                cut: BTreeSet::new(),
                drop_ppm: 0,
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
                rng: seed,
                filter: None,
            })),
            stats: Arc::new(NetStats::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects (or reconnects, after a restart) node `id`'s inbox.
    pub fn attach(&self, id: NodeId, inbox: InboxSender) {
        self.lock().inboxes.insert(id, inbox);
    }

    /// Disconnects node `id` (its messages in flight are lost).
    pub fn detach(&self, id: NodeId) {
        self.lock().inboxes.remove(&id);
    }

    /// The transport node `id` sends through.
    pub fn transport(&self, id: NodeId) -> Arc<MemTransport> {
        Arc::new(MemTransport { net: self.clone(), me: id, peers: Mutex::new(Vec::new()) })
    }

    /// Drops each message with probability `rate` (0.0–1.0).
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().drop_ppm = (rate.clamp(0.0, 1.0) * 1_000_000.0) as u32;
    }

    /// Delays every message by `delay` plus a uniform random part of `jitter`.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        let mut s = self.lock();
        s.delay = delay;
        s.jitter = jitter;
    }

    /// Cuts every link between a node of `a` and a node of `b` (both directions).
    pub fn partition(&self, a: &[NodeId], b: &[NodeId]) {
        let mut s = self.lock();
        for x in a {
            for y in b {
                if x != y {
                    s.cut.insert(((*x).min(*y), (*x).max(*y)));
                }
            }
        }
    }

    /// Cuts `id` off from every other attached node.
    pub fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.lock().inboxes.keys().copied().filter(|n| *n != id).collect();
        self.partition(&[id], &others);
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Passes every message through `filter` (replacing any earlier one); `None` removes it.
    pub fn set_filter(&self, filter: Option<MessageFilter>) {
        self.lock().filter = filter;
    }

    /// The network's counters.
    pub fn stats(&self) -> &NetStats {
        &self.stats
    }

    fn route(&self, mut m: Message) {
        let (inbox, delay) = {
            let mut s = self.lock();
            let link = (m.from.min(m.to), m.from.max(m.to));
            let mut drop = s.cut.contains(&link);
            if !drop && s.drop_ppm > 0 {
                drop = (s.next_u64() % 1_000_000) < u64::from(s.drop_ppm);
            }
            if !drop {
                if let Some(f) = s.filter.as_mut() {
                    drop = !f(&mut m);
                }
            }
            let inbox = if drop { None } else { s.inboxes.get(&m.to).cloned() };
            let mut delay = s.delay;
            if !s.jitter.is_zero() {
                let j = s.next_u64() % (s.jitter.as_nanos().max(1) as u64);
                delay += Duration::from_nanos(j);
            }
            (inbox, delay)
        };
        let Some(inbox) = inbox else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let stats = Arc::clone(&self.stats);
        let deliver = move |inbox: InboxSender, m: Message| {
            if inbox.deliver(m) {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        if delay.is_zero() {
            deliver(inbox, m);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    tokio::time::sleep(delay).await;
                    deliver(inbox, m);
                });
            }
            Err(_) => deliver(inbox, m),
        }
    }
}

/// One node's end of a [`MemNetwork`].
#[derive(Debug)]
pub struct MemTransport {
    net: MemNetwork,
    me: NodeId,
    peers: Mutex<Vec<(NodeId, String)>>,
}

impl MemTransport {
    /// The members last given to [`Transport::set_peers`].
    pub fn peers(&self) -> Vec<(NodeId, String)> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Transport for MemTransport {
    fn send(&self, msg: Message) {
        debug_assert_eq!(msg.from, self.me);
        self.net.route(msg);
    }

    fn set_peers(&self, peers: &[(NodeId, String)]) {
        *self.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers.to_vec();
    }
}
