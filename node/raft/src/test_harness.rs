//! A tiny deterministic in-memory cluster for unit tests: a FIFO network with cut links,
//! synchronous "disks", and a state machine that records applied command payloads.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::{
    Config, Configuration, Entry, EntryKind, Event, HardState, LogIndex, Message, NodeId, RawNode, ReadState,
    SnapshotMeta,
};

/// What one node's "disk" and state machine hold.
#[derive(Default, Clone, Debug)]
pub(crate) struct Disk {
    pub hard_state: HardState,
    pub entries: Vec<Entry>,
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    pub staging: Vec<u8>,
    /// Live-snapshot mode: the image captured on demand for sending (volatile).
    pub serving: Option<(SnapshotMeta, Vec<u8>)>,
}

pub(crate) struct Cluster {
    pub nodes: BTreeMap<NodeId, RawNode>,
    pub disks: BTreeMap<NodeId, Disk>,
    /// Applied command payloads per node (the state machine).
    pub fsm: BTreeMap<NodeId, Vec<Vec<u8>>>,
    pub queue: VecDeque<Message>,
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub down: BTreeSet<NodeId>,
    pub reads: BTreeMap<NodeId, Vec<ReadState>>,
    pub events: BTreeMap<NodeId, Vec<Event>>,
    /// When set, messages of these kinds are dropped (by a predicate).
    pub drop_if: Option<fn(&Message) -> bool>,
    pub seed: u64,
    /// The application keeps no snapshot file to send: it captures its state machine on
    /// demand (see "Bounded memory" in `crate::ready`). Requests seen: (follower, meta index).
    pub live_snapshots: bool,
    pub requests_seen: Vec<(NodeId, LogIndex)>,
}

pub(crate) fn config(id: u64, seed: u64) -> Config {
    let mut c = Config::new(NodeId(id));
    c.rng_seed = seed;
    c.max_inflight_appends = 4;
    c
}

fn encode_fsm(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(&(i.len() as u32).to_le_bytes());
        out.extend_from_slice(i);
    }
    out
}

fn decode_fsm(mut b: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        out.push(b[4..4 + n].to_vec());
        b = &b[4 + n..];
    }
    out
}

impl Cluster {
    /// `voters` voters bootstrapped with ids 1..=voters.
    pub fn new(voters: u64, seed: u64) -> Cluster {
        let conf = Configuration::with_voters((1..=voters).map(NodeId));
        let mut c = Cluster::empty(seed);
        for id in 1..=voters {
            let boot = RawNode::bootstrap_entry(&conf);
            let disk = Disk { entries: vec![boot.clone()], ..Disk::default() };
            c.disks.insert(NodeId(id), disk);
            let n = RawNode::restore(config(id, seed), HardState::default(), None, vec![boot]).unwrap();
            c.nodes.insert(NodeId(id), n);
            c.fsm.insert(NodeId(id), Vec::new());
        }
        c
    }

    pub fn empty(seed: u64) -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            fsm: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            reads: BTreeMap::new(),
            events: BTreeMap::new(),
            drop_if: None,
            seed,
            live_snapshots: false,
            requests_seen: Vec::new(),
        }
    }

    /// Adds a blank node (to be added to the cluster by a membership change).
    pub fn add_blank(&mut self, id: u64) {
        let n = RawNode::new(config(id, self.seed)).unwrap();
        self.nodes.insert(NodeId(id), n);
        self.disks.insert(NodeId(id), Disk::default());
        self.fsm.insert(NodeId(id), Vec::new());
    }

    pub fn node(&mut self, id: u64) -> &mut RawNode {
        self.nodes.get_mut(&NodeId(id)).unwrap()
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes.iter().filter(|(id, n)| n.is_leader() && !self.down.contains(id)).map(|(id, _)| *id).collect()
    }

    /// Carries out every Ready of node `id` synchronously.
    pub fn process(&mut self, id: NodeId) {
        if self.down.contains(&id) {
            return;
        }
        for _ in 0..100 {
            let node = self.nodes.get_mut(&id).unwrap();
            if !node.has_ready() {
                return;
            }
            let rd = node.ready();
            let disk = self.disks.get_mut(&id).unwrap();
            let fsm = self.fsm.get_mut(&id).unwrap();
            let mut out = rd.messages.clone();
            for c in &rd.snapshot_chunks {
                if c.offset == 0 {
                    disk.staging.clear();
                }
                assert_eq!(disk.staging.len() as u64, c.offset);
                disk.staging.extend_from_slice(&c.data);
            }
            if let Some(s) = &rd.snapshot {
                let data = std::mem::take(&mut disk.staging);
                *fsm = decode_fsm(&data);
                disk.snapshot = Some((s.meta.clone(), data));
                if s.keep_log {
                    disk.entries.retain(|e| e.index > s.meta.index);
                } else {
                    disk.entries.clear();
                }
            }
            if let Some(first) = rd.entries.first() {
                disk.entries.retain(|e| e.index < first.index);
                disk.entries.extend(rd.entries.iter().cloned());
            }
            if let Some(hs) = rd.hard_state {
                disk.hard_state = hs;
            }
            node.advance(&rd);
            out.extend(rd.persisted_messages.iter().cloned());
            for e in &rd.committed_entries {
                if e.kind == EntryKind::Command {
                    fsm.push(e.data.clone());
                }
            }
            self.reads.entry(id).or_default().extend(rd.read_states.iter().cloned());
            self.events.entry(id).or_default().extend(rd.events.iter().cloned());
            for req in &rd.snapshot_requests {
                self.requests_seen.push((req.to, req.meta.index));
                if self.live_snapshots {
                    let data = match &disk.serving {
                        Some((m, d)) if *m == req.meta => d.clone(),
                        _ if req.offset == 0 => {
                            // Capture the state machine now; the core restarts the transfer
                            // with this snapshot's meta unless it is the one asked for.
                            let meta = node.snapshot_taken(node.log().applied()).unwrap();
                            let data = encode_fsm(fsm);
                            disk.serving = Some((meta.clone(), data.clone()));
                            if meta != req.meta {
                                continue;
                            }
                            data
                        }
                        _ => continue,
                    };
                    let lo = (req.offset as usize).min(data.len());
                    let hi = (lo + req.max_bytes as usize).min(data.len());
                    let _ = node.send_snapshot_chunk(req, data[lo..hi].to_vec(), hi == data.len());
                    continue;
                }
                let (meta, data) = disk.snapshot.clone().expect("snapshot requested but none taken");
                assert_eq!(meta, req.meta);
                let lo = req.offset as usize;
                let hi = (lo + req.max_bytes as usize).min(data.len());
                let _ = node.send_snapshot_chunk(req, data[lo..hi].to_vec(), hi == data.len());
            }
            for m in out {
                self.send(m);
            }
        }
        panic!("node {id:?} never quiesced");
    }

    fn send(&mut self, m: Message) {
        if self.cut.contains(&(m.from, m.to)) || self.down.contains(&m.to) {
            return;
        }
        if self.drop_if.is_some_and(|f| f(&m)) {
            return;
        }
        self.queue.push_back(m);
    }

    /// Delivers messages until none is left (bounded).
    pub fn deliver(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
        for _ in 0..100_000 {
            let Some(m) = self.queue.pop_front() else { return };
            if self.down.contains(&m.to) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            let to = m.to;
            self.nodes.get_mut(&to).unwrap().step(m).unwrap();
            self.process(to);
        }
        panic!("network never quiesced");
    }

    pub fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().filter(|id| !self.down.contains(id)).collect();
        for id in ids {
            self.nodes.get_mut(&id).unwrap().tick();
            self.process(id);
        }
    }

    /// Ticks and delivers `n` rounds.
    pub fn run(&mut self, n: u32) {
        for _ in 0..n {
            self.tick_all();
            self.deliver();
        }
    }

    /// Makes `id` campaign now and delivers everything.
    /// Leases of followers are treated as expired (as if the leader had been silent).
    pub fn elect(&mut self, id: u64) {
        for n in self.nodes.values_mut() {
            if !n.is_leader() {
                n.election_elapsed = n.election_ticks;
            }
        }
        self.node(id).campaign(true, false);
        self.process(NodeId(id));
        self.deliver();
        assert!(self.node(id).is_leader(), "node {id} did not win the election");
    }

    /// Ticks until some live node is leader, bounded.
    pub fn wait_leader(&mut self, max_ticks: u32) -> NodeId {
        for _ in 0..max_ticks {
            if let [l] = self.leaders()[..] {
                return l;
            }
            self.run(1);
        }
        panic!("no single leader within {max_ticks} ticks: {:?}", self.leaders());
    }

    pub fn propose(&mut self, id: u64, data: &[u8]) -> LogIndex {
        let i = self.node(id).propose(data.to_vec()).unwrap();
        self.process(NodeId(id));
        i
    }

    pub fn isolate(&mut self, id: u64) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for o in ids {
            self.cut.insert((NodeId(id), o));
            self.cut.insert((o, NodeId(id)));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes a node: it loses everything not on its disk.
    pub fn crash(&mut self, id: u64) {
        self.down.insert(NodeId(id));
        self.queue.retain(|m| m.to != NodeId(id));
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, id: u64) {
        let disk = self.disks[&NodeId(id)].clone();
        let (meta, fsm) = match &disk.snapshot {
            Some((m, d)) => (Some(m.clone()), decode_fsm(d)),
            None => (None, Vec::new()),
        };
        let n = RawNode::restore(config(id, self.seed.wrapping_add(1)), disk.hard_state, meta, disk.entries).unwrap();
        self.nodes.insert(NodeId(id), n);
        self.fsm.insert(NodeId(id), fsm);
        self.down.remove(&NodeId(id));
    }

    /// The application on `id` snapshots its state machine at its applied index.
    pub fn take_snapshot(&mut self, id: u64, keep_trailing: u64) -> SnapshotMeta {
        let node = self.nodes.get_mut(&NodeId(id)).unwrap();
        let applied = node.log().applied();
        let meta = node.snapshot_taken(applied).unwrap();
        node.compact(LogIndex(applied.0.saturating_sub(keep_trailing)));
        let data = encode_fsm(&self.fsm[&NodeId(id)]);
        let disk = self.disks.get_mut(&NodeId(id)).unwrap();
        disk.entries.retain(|e| e.index > meta.index);
        disk.snapshot = Some((meta.clone(), data));
        meta
    }

    pub fn fsm(&self, id: u64) -> &Vec<Vec<u8>> {
        &self.fsm[&NodeId(id)]
    }
}
