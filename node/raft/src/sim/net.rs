//! A simulated network: per-message delay, loss, duplication and reordering, and directed
//! link cuts for symmetric and one-way partitions. Generic over the message type.
//!
//! Reordering is not a separate knob: every copy of a message gets its own random delay, so two
//! messages on one link overtake each other whenever the later one draws a shorter delay.
//! A link cut is checked when a message would be *delivered*, so messages in flight when a
//! partition starts are lost too (as on a real network whose cable was pulled).

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};

use super::rng::Rng;
use crate::NodeId;

/// Network fault settings. Probabilities are per million.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Minimum one-way delay, in virtual milliseconds.
    pub delay_ms_min: u64,
    /// Maximum one-way delay, in virtual milliseconds.
    pub delay_ms_max: u64,
    /// Probability that a message is lost.
    pub drop_per_million: u32,
    /// Probability that a message is delivered twice (the copy gets its own delay).
    pub duplicate_per_million: u32,
}

impl NetConfig {
    /// A network that delivers everything, in order, after `delay_ms`.
    pub fn perfect(delay_ms: u64) -> NetConfig {
        NetConfig { delay_ms_min: delay_ms, delay_ms_max: delay_ms, drop_per_million: 0, duplicate_per_million: 0 }
    }
}

/// A message on its way.
#[derive(Debug)]
struct InFlight<M> {
    from: NodeId,
    to: NodeId,
    msg: M,
}

/// Counters, for reports and for checking that faults really happened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered (duplicates count twice).
    pub delivered: u64,
    /// Messages lost to the loss probability.
    pub dropped: u64,
    /// Extra copies created.
    pub duplicated: u64,
    /// Messages lost to a cut link or a down node.
    pub cut: u64,
}

/// The network.
#[derive(Debug)]
pub struct Network<M> {
    /// Current fault settings (may be changed between steps).
    pub config: NetConfig,
    rng: Rng,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    slots: std::collections::HashMap<u64, InFlight<M>>,
    seq: u64,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// What happened so far.
    pub stats: NetStats,
}

impl<M: Clone> Network<M> {
    /// An empty network.
    pub fn new(config: NetConfig, rng: Rng) -> Network<M> {
        Network {
            config,
            rng,
            queue: BinaryHeap::new(),
            slots: Default::default(),
            seq: 0,
            cut: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    fn enqueue(&mut self, now_ms: u64, from: NodeId, to: NodeId, msg: M) {
        let delay = self.rng.range(self.config.delay_ms_min, self.config.delay_ms_max);
        self.seq += 1;
        self.queue.push(Reverse((now_ms + delay, self.seq)));
        self.slots.insert(self.seq, InFlight { from, to, msg });
    }

    /// Hands a message to the network at virtual time `now_ms`.
    pub fn send(&mut self, now_ms: u64, from: NodeId, to: NodeId, msg: M) {
        self.stats.sent += 1;
        if self.rng.chance(self.config.drop_per_million) {
            self.stats.dropped += 1;
            return;
        }
        if self.rng.chance(self.config.duplicate_per_million) {
            self.stats.duplicated += 1;
            self.enqueue(now_ms, from, to, msg.clone());
        }
        self.enqueue(now_ms, from, to, msg);
    }

    /// Puts a message back to be delivered at `at_ms` exactly (no loss): used to hold messages
    /// for a paused server, as its socket buffers would.
    pub fn deliver_at(&mut self, at_ms: u64, from: NodeId, to: NodeId, msg: M) {
        self.seq += 1;
        self.queue.push(Reverse((at_ms, self.seq)));
        self.slots.insert(self.seq, InFlight { from, to, msg });
    }

    /// When the next message is due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.queue.peek().map(|Reverse((t, _))| *t)
    }

    /// Removes and returns the next message due at or before `now_ms` whose link is up
    /// (`up(node)` says whether a node is running). Messages on cut links are discarded.
    pub fn pop_due(&mut self, now_ms: u64, mut up: impl FnMut(NodeId) -> bool) -> Option<(NodeId, NodeId, M)> {
        while let Some(&Reverse((t, id))) = self.queue.peek() {
            if t > now_ms {
                return None;
            }
            self.queue.pop();
            let Some(m) = self.slots.remove(&id) else {
                continue;
            };
            if self.cut.contains(&(m.from, m.to)) || !up(m.to) {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some((m.from, m.to, m.msg));
        }
        None
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut_one_way(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x, y));
                self.cut.insert((y, x));
            }
        }
    }

    /// Cuts every link to and from `node` (isolates it).
    pub fn isolate(&mut self, node: NodeId, others: &[NodeId]) {
        self.partition(&[node], others);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }

    /// Messages still in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    fn drain(net: &mut Network<u32>, until: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut now = 0;
        while now <= until {
            while let Some((_, _, m)) = net.pop_due(now, |_| true) {
                out.push((now, m));
            }
            now += 1;
        }
        out
    }

    #[test]
    fn perfect_network_delivers_in_order_after_the_delay() {
        let mut net = Network::new(NetConfig::perfect(5), Rng::new(1));
        for i in 0..10 {
            net.send(0, n(1), n(2), i);
        }
        let got = drain(&mut net, 100);
        assert_eq!(got, (0..10).map(|i| (5, i)).collect::<Vec<_>>());
    }

    #[test]
    fn jittered_delays_reorder_and_faults_happen() {
        let cfg =
            NetConfig { delay_ms_min: 1, delay_ms_max: 50, drop_per_million: 100_000, duplicate_per_million: 100_000 };
        let mut net = Network::new(cfg, Rng::new(9));
        for i in 0..1000 {
            net.send(0, n(1), n(2), i);
        }
        let got: Vec<u32> = drain(&mut net, 100).into_iter().map(|x| x.1).collect();
        assert!(got.windows(2).any(|w| w[0] > w[1]), "no reordering");
        assert!(net.stats.dropped > 50 && net.stats.duplicated > 50, "{:?}", net.stats);
        assert_eq!(got.len() as u64, 1000 - net.stats.dropped + net.stats.duplicated);
    }

    #[test]
    fn partitions_cut_in_flight_messages_and_one_way_cuts_are_one_way() {
        let mut net = Network::new(NetConfig::perfect(5), Rng::new(1));
        net.send(0, n(1), n(2), 1);
        net.send(0, n(2), n(1), 2);
        net.cut_one_way(n(1), n(2));
        let got: Vec<u32> = drain(&mut net, 10).into_iter().map(|x| x.1).collect();
        assert_eq!(got, vec![2]);
        net.partition(&[n(3)], &[n(1), n(2)]);
        net.send(20, n(3), n(1), 3);
        net.send(20, n(1), n(3), 4);
        net.heal();
        net.partition(&[n(3)], &[n(1)]);
        net.send(20, n(3), n(2), 5);
        let mut now = 20;
        let mut got = Vec::new();
        while now < 40 {
            while let Some((_, _, m)) = net.pop_due(now, |_| true) {
                got.push(m);
            }
            now += 1;
        }
        assert_eq!(got, vec![5]);
        assert!(net.is_partitioned());
    }

    #[test]
    fn messages_to_down_nodes_are_lost() {
        let mut net = Network::new(NetConfig::perfect(1), Rng::new(1));
        net.send(0, n(1), n(2), 1);
        assert!(net.pop_due(5, |id| id != n(2)).is_none());
        assert_eq!(net.stats.cut, 1);
        assert_eq!(net.in_flight(), 0);
    }
}
