//! The simulation loop: virtual time, servers, clients, faults, and the checks run after every
//! step.
//!
//! A run has two phases, as TigerBeetle's VOPR does:
//!
//! 1. **Safety** (`safety_ms` of virtual time): clients write and read while the network drops,
//!    duplicates, delays and reorders messages and partitions (both ways and one way), servers
//!    crash (losing unsynced writes) and restart, members are added, re-assigned and removed,
//!    leadership is transferred, and snapshots are taken and installed. After every step the
//!    safety checker looks at the server that moved.
//! 2. **Liveness**: the network heals and every server restarts; within `liveness_ms` a leader
//!    must exist and every replica must have applied every acknowledged write (and all replicas
//!    must hold the same state).
//!
//! Finally the clients' history is checked for linearizability.

use crate::check::kv::{KvInput, KvModel, KvOutput};
use crate::check::linearizability::{self, Limits, Operation, Outcome};
use crate::check::safety::{digest, EntryId, SafetyChecker};
use crate::membership::ConfChange;
use crate::message::Message;
use crate::ready::{Event, Ready, StateRole};
use crate::sim::host::{Batch, Host, View};
use crate::sim::kv::{Command, KvStore};
use crate::sim::net::{NetConfig, Network};
use crate::sim::rng::Rng;
use crate::sim::{Failure, Options, Report, Scenario};
use crate::types::{HardState, Role};
use crate::{Config, Configuration, EntryKind, LogIndex, NodeId, RawNode, Term};

/// Most `Ready`s a server may produce in a row before the simulator calls it a livelock.
const READY_LOOP_MAX: usize = 10_000;

/// Most messages delivered without virtual time advancing before the run is declared a
/// livelock (zero-delay links let two servers ping-pong forever within one millisecond).
const SAME_INSTANT_MESSAGES_MAX: u64 = 200_000;

/// Most messages in flight at once before the run is declared runaway (bounds memory).
const IN_FLIGHT_MAX: usize = 1_000_000;

/// Extra liveness time allowed per log entry a replica is behind when the faults heal.
const LIVENESS_MS_PER_ENTRY: u64 = 20;

#[derive(Debug)]
struct ClientOp {
    hist: usize,
    cmd: Command,
    via_read_index: bool,
    /// The highest index known committed (on any server) when the operation was invoked: a
    /// read must be served at or after it.
    committed_at_invoke: LogIndex,
    deadline_ms: u64,
    /// The server holding the request, if it accepted it.
    at: Option<NodeId>,
    retry_at_ms: u64,
}

#[derive(Debug)]
struct Client {
    id: u64,
    seq: u64,
    op: Option<ClientOp>,
    next_ms: u64,
    leader_hint: Option<NodeId>,
    last_seen: Vec<Option<String>>,
}

pub(crate) struct Cluster {
    sc: Scenario,
    opts: Options,
    now_ms: u64,
    rng: Rng,
    crash_rng: Rng,
    net: Network<Message>,
    hosts: Vec<Host>,
    clients: Vec<Client>,
    history: Vec<Operation<KvInput, KvOutput>>,
    /// Client sequence number of each history entry, by invocation time.
    history_seq: std::collections::HashMap<u64, u64>,
    clock: u64,
    checker: SafetyChecker,
    next_fault_ms: u64,
    heal_at_ms: Option<u64>,
    faults_on: bool,
    clients_on: bool,
    acked_max: LogIndex,
    /// Reactive faults aimed at new leaders: (when, leader, what).
    churn: Vec<(u64, NodeId, u64)>,
    /// Messages delivered at the current virtual instant, and that instant.
    same_instant: (u64, u64),
    /// A membership change catching its server up: (leader, its term, the server).
    promoting: Option<(NodeId, Term, NodeId)>,
    /// Every command's first application on any replica: (client, seq) -> (clock, output).
    effects: std::collections::HashMap<(u64, u64), (u64, KvOutput)>,
    pub(crate) report: Report,
}

thread_local! {
    /// The trace of the run on this thread (kept outside the cluster so that a panic in the
    /// core does not lose it).
    pub(crate) static TRACE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn ctx_of(client: u64, seq: u64) -> Vec<u8> {
    let mut v = client.to_le_bytes().to_vec();
    v.extend_from_slice(&seq.to_le_bytes());
    v
}

fn parse_ctx(ctx: &[u8]) -> Option<(u64, u64)> {
    if ctx.len() != 16 {
        return None;
    }
    let a = u64::from_le_bytes(ctx[..8].try_into().ok()?);
    let b = u64::from_le_bytes(ctx[8..].try_into().ok()?);
    Some((a, b))
}

/// How far a leader's message lets a follower's commit index go (Figure 2, AppendEntries rule
/// 5: `min(leaderCommit, index of the last new entry)`; a heartbeat: its commit), if it is one.
fn commit_covered(m: &Message) -> Option<LogIndex> {
    use crate::message::MessageBody as B;
    match &m.body {
        B::AppendEntries(a) => Some(a.leader_commit.min(LogIndex(a.prev_log_index.0 + a.entries.len() as u64))),
        B::Heartbeat(hb) => Some(hb.commit),
        _ => None,
    }
}

fn entry_id(e: &crate::Entry) -> EntryId {
    EntryId { index: e.index, term: e.term, digest: digest(e.kind, &e.data) }
}

impl Cluster {
    pub(crate) fn new(opts: Options) -> Cluster {
        let mut rng = Rng::new(opts.seed);
        let sc = Scenario::from_rng(&mut rng);
        let crash_rng = rng.fork();
        let net = Network::new(sc.net.clone(), rng.fork());
        let ids: Vec<NodeId> = (1..=(sc.voters + sc.extra) as u64).map(NodeId).collect();
        let mut hosts: Vec<Host> = ids.iter().map(|&id| Host::new(id)).collect();
        // Clock-rate skew: each server's ticks come at its own rate.
        for h in &mut hosts {
            let skew = sc.skew_permille;
            let rate = 1000 + rng.range(0, 2 * skew) - skew;
            h.tick_ms = (sc.tick_ms * rate).div_ceil(1000).max(1);
        }
        let clients = (0..sc.clients as u64)
            .map(|id| Client { id, seq: 0, op: None, next_ms: 0, leader_hint: None, last_seen: vec![None; sc.keys] })
            .collect();
        let report = Report { seed: opts.seed, scenario: format!("{sc:?}"), ..Report::default() };
        Cluster {
            sc,
            opts,
            now_ms: 0,
            rng,
            crash_rng,
            net,
            hosts,
            clients,
            history: Vec::new(),
            history_seq: std::collections::HashMap::new(),
            clock: 0,
            checker: SafetyChecker::new(),
            next_fault_ms: 0,
            heal_at_ms: None,
            faults_on: true,
            clients_on: true,
            acked_max: LogIndex(0),
            churn: Vec::new(),
            same_instant: (0, 0),
            effects: std::collections::HashMap::new(),
            promoting: None,
            report,
        }
    }

    fn log(&mut self, f: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = format!("{:>7}ms {}", self.now_ms, f());
            TRACE.with(|t| t.borrow_mut().push(line));
        }
    }

    fn fail(&self, what: impl Into<String>) -> Failure {
        Failure {
            seed: self.opts.seed,
            at_ms: self.now_ms,
            what: what.into(),
            trace: TRACE.with(|t| t.borrow().clone()),
        }
    }

    fn config_for(&self, id: NodeId) -> Config {
        let mut c = Config::new(id);
        c.network_latency = std::time::Duration::from_millis(self.sc.latency_ms);
        c.tick = std::time::Duration::from_millis(self.sc.tick_ms);
        c.max_inflight_appends = self.sc.max_inflight;
        c.max_append_bytes = self.sc.max_append_bytes;
        c.snapshot_chunk_bytes = self.sc.chunk_bytes;
        c.rng_seed = self.opts.seed;
        c.eager_commit_updates = !self.sc.lazy_commit_updates;
        c
    }

    fn idx(&self, id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    /// Starts (or restarts) a server from its disk.
    fn boot(&mut self, h: usize) -> Result<(), Failure> {
        let id = self.hosts[h].id;
        if self.faults_on && self.hosts[h].started && self.rng.chance(self.sc.read_error_per_million) {
            // EIO reading the log: the process exits; the operator (or a supervisor) tries
            // again later.
            let again = self.rng.range(1, self.sc.down_ms_max.max(2));
            self.hosts[h].restart_at_ms = Some(self.now_ms + again);
            self.report.read_errors += 1;
            self.log(|| format!("{id:?} restart failed: read error; again in {again} ms"));
            return Ok(());
        }
        if let Some(at) = self.hosts[h].disk.first_corrupt() {
            // The log store's checksum refuses the entry: the server does not start. The
            // operator wipes it; it rejoins as a new, empty server once removed.
            self.log(|| format!("{id:?} refuses to start: stored entry {at:?} is corrupt; the operator wipes it"));
            self.hosts[h].wipe();
            self.report.wipes += 1;
            return Ok(());
        }
        let cfg = self.config_for(id);
        let host = &mut self.hosts[h];
        let meta = host.disk.snapshot.as_ref().map(|s| s.0.clone());
        let raw = RawNode::restore(cfg, host.disk.hard, meta, host.disk.log.clone())
            .map_err(|e| self.fail(format!("restore of {id:?} failed: {e}")))?;
        let host = &mut self.hosts[h];
        let (snap_index, kv) = match &host.disk.snapshot {
            Some((m, data)) => match KvStore::restore(data) {
                Some(kv) => (m.index, kv),
                None => return Err(self.fail(format!("{id:?}: stored snapshot does not decode"))),
            },
            None => (LogIndex(0), KvStore::default()),
        };
        let host = &mut self.hosts[h];
        host.kv = kv;
        host.applied = snap_index;
        host.last_snapshot = snap_index;
        host.view = View::from_disk(&host.disk);
        host.started = true;
        host.restart_at_ms = None;
        host.last_hard = host.disk.hard;
        host.next_tick_ms = self.now_ms + 1 + self.rng.below(host.tick_ms);
        let (commit, term) = (raw.log().committed(), raw.term());
        host.raw = Some(raw);
        self.checker.observe_restart(id, snap_index);
        self.checker.observe_snapshot_restore(id, snap_index);
        let view = &self.hosts[h].view;
        self.checker
            .observe_commit(id, term, commit, |i| view.entry(i).map(entry_id))
            .map_err(|v| self.fail(format!("on restart: {v}")))?;
        self.log(|| format!("{id:?} boots: snapshot {snap_index:?}, commit {commit:?}"));
        self.drive(h)
    }

    fn bootstrap(&mut self) -> Result<(), Failure> {
        let conf = Configuration::with_voters((1..=self.sc.voters as u64).map(NodeId));
        let entry = RawNode::bootstrap_entry(&conf);
        for h in 0..self.sc.voters {
            let id = self.hosts[h].id;
            self.hosts[h].disk = crate::sim::host::Disk::default();
            self.hosts[h].disk.append(std::slice::from_ref(&entry)).map_err(|e| self.fail(e))?;
            self.checker.observe_append(id, entry_id(&entry), Term(0)).map_err(|v| self.fail(v.to_string()))?;
            self.boot(h)?;
        }
        Ok(())
    }

    // ----- the loop ---------------------------------------------------------------------

    pub(crate) fn run(&mut self) -> Result<(), Failure> {
        self.bootstrap()?;
        self.next_fault_ms = self.sc.fault_gap_ms;
        let safety_end = self.opts.safety_ms;
        while self.now_ms < safety_end {
            self.step(safety_end)?;
        }
        // Liveness: heal everything, stop faults and new client operations.
        self.faults_on = false;
        self.clients_on = false;
        self.churn.clear();
        for h in &mut self.hosts {
            if h.paused_until_ms.is_some() {
                h.paused_until_ms = Some(self.now_ms);
            }
        }
        self.net.heal();
        // A healthy network: no loss, and a fixed delay, so each link delivers in order (as a
        // TCP connection does). Reordering stays a safety-phase fault.
        self.net.config = NetConfig::perfect(self.sc.latency_ms);
        self.log(|| "liveness phase: healed, restarting everyone".to_string());
        for h in 0..self.hosts.len() {
            if self.hosts[h].started && !self.hosts[h].is_up() && !self.hosts[h].wiped {
                self.boot(h)?;
            }
        }
        // The bound grows with the backlog at healing time: a replica far behind may have to
        // be caught up one small append at a time (`max_append_bytes`).
        let last = self.hosts.iter().filter_map(|h| h.raw.as_ref().map(|r| r.log().last_index())).max();
        let least = self.hosts.iter().filter(|h| h.is_up()).map(|h| h.applied).min();
        let backlog = last.unwrap_or(LogIndex(0)).0.saturating_sub(least.unwrap_or(LogIndex(0)).0);
        let bound_ms = self.opts.liveness_ms + backlog * LIVENESS_MS_PER_ENTRY;
        let live_start = self.now_ms;
        let deadline = live_start + bound_ms;
        loop {
            if self.converged() {
                break;
            }
            if self.now_ms >= deadline {
                return Err(self.fail(format!(
                    "liveness: no convergence {bound_ms} ms after healing (backlog {backlog} entries; acked up to {:?}; {})",
                    self.acked_max,
                    self.status_line()
                )));
            }
            self.step(deadline)?;
        }
        self.report.liveness_ms = self.now_ms - live_start;
        self.check_replicas_equal()?;
        // Operations still pending have an unknown outcome.
        for c in &mut self.clients {
            c.op = None;
        }
        self.report.virtual_ms = self.now_ms;
        self.report.net = self.net.stats;
        self.check_history()
    }

    fn status_line(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            if let Some(r) = &h.raw {
                s.push_str(&format!(
                    "{:?}:{:?}/{:?} commit {:?} applied {:?} conf {:?}; ",
                    h.id,
                    r.role(),
                    r.term(),
                    r.log().committed(),
                    h.applied,
                    r.configuration().servers().iter().map(|s| (s.id.0, s.role as u8)).collect::<Vec<_>>()
                ));
            } else if h.started {
                s.push_str(&format!("{:?}:down; ", h.id));
            }
        }
        s
    }

    /// The leader the cluster would agree on: the live server that leads the highest term, if
    /// no replica (voter or standby) of its configuration has moved to a later term. (A spare
    /// or a removed server may sit in a later term without disrupting anyone: pre-vote keeps
    /// it from being heard, and the leader never talks to it.)
    fn leader(&self) -> Option<usize> {
        let best = (0..self.hosts.len())
            .filter(|&h| {
                self.hosts[h].is_live() && self.hosts[h].raw.as_ref().is_some_and(|r| r.role() == StateRole::Leader)
            })
            .max_by_key(|&h| self.hosts[h].raw.as_ref().map(|r| r.term()))?;
        let raw = self.hosts[best].raw.as_ref()?;
        let conf = raw.configuration();
        let superseded = self
            .hosts
            .iter()
            .any(|h| conf.replicas().any(|id| id == h.id) && h.raw.as_ref().is_some_and(|r| r.term() > raw.term()));
        (!superseded).then_some(best)
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let Some(raw) = self.hosts[l].raw.as_ref() else {
            return false;
        };
        let commit = raw.log().committed();
        if commit < self.acked_max || commit < raw.log().last_index() {
            return false;
        }
        // Every client request answered or timed out.
        if self.clients.iter().any(|c| c.op.is_some()) {
            return false;
        }
        raw.configuration().replicas().all(|id| {
            let h = &self.hosts[self.idx(id)];
            h.is_up() && h.applied == commit
        })
    }

    fn check_replicas_equal(&self) -> Result<(), Failure> {
        let Some(l) = self.leader() else {
            return Err(self.fail("no leader at the end"));
        };
        let Some(raw) = self.hosts[l].raw.as_ref() else {
            return Err(self.fail("leader vanished"));
        };
        let reference = &self.hosts[l].kv;
        for id in raw.configuration().replicas() {
            let h = &self.hosts[self.idx(id)];
            if &h.kv != reference {
                return Err(self.fail(format!(
                    "replica {:?} state differs from leader {:?} at applied {:?}",
                    id, self.hosts[l].id, h.applied
                )));
            }
        }
        Ok(())
    }

    /// Operations whose client gave up (outcome unknown) are completed from what the cluster
    /// did, as a client that had waited would have seen it: a write applied on some replica
    /// took effect no later than its first application, with the output computed there; a
    /// write applied nowhere by the end (the cluster has converged: nothing more can commit)
    /// never took effect, since reads and cas see only applied state. Unknown reads are dropped
    /// by the checker. The history checked is then (almost) free of unknown outcomes.
    fn completed_history(&self) -> Vec<Operation<KvInput, KvOutput>> {
        let mut out = Vec::with_capacity(self.history.len());
        for (k, op) in self.history.iter().enumerate() {
            if op.response.is_some() || matches!(op.input, KvInput::Get(_)) {
                out.push(op.clone());
                continue;
            }
            let seq = self.history_seq.get(&op.invoke).copied();
            match seq.and_then(|s| self.effects.get(&(op.client, s))) {
                // Its client went on meanwhile: the completed operation gets a client id of its
                // own (the checker requires a client's operations not to overlap).
                Some((t, o)) if *t >= op.invoke => {
                    out.push(Operation { client: (1 << 63) | k as u64, response: Some((*t, o.clone())), ..op.clone() })
                }
                Some(_) => out.push(op.clone()),
                None => {}
            }
        }
        out
    }

    fn check_history(&mut self) -> Result<(), Failure> {
        self.report.ops = self.history.len();
        self.report.ops_unknown = self.history.iter().filter(|o| o.response.is_none()).count();
        let limits = Limits { steps_max: self.opts.lin_steps_max };
        let history = if self.opts.complete_unknowns { self.completed_history() } else { self.history.clone() };
        match linearizability::check(&KvModel, &history, limits) {
            Ok(Outcome::Linearizable) => Ok(()),
            Ok(Outcome::Unknown { steps }) => {
                self.report.lin_unknown = true;
                self.report.lin_steps = steps;
                Ok(())
            }
            Ok(Outcome::NotLinearizable(v)) => {
                let ops: Vec<String> =
                    v.longest_prefix.iter().chain(&v.stuck_at).map(|&i| format!("  #{i} {:?}", history[i])).collect();
                Err(self.fail(format!(
                    "history not linearizable on key {}: linearized {} ops, then stuck at {:?}\n{}",
                    v.partition,
                    v.longest_prefix.len(),
                    v.stuck_at,
                    ops.join("\n")
                )))
            }
            Err(e) => Err(self.fail(format!("malformed history: {e}"))),
        }
    }

    /// Advances to the next event (no later than `until_ms`) and handles everything due then.
    fn step(&mut self, until_ms: u64) -> Result<(), Failure> {
        let mut next = until_ms;
        if let Some(t) = self.net.next_due_ms() {
            next = next.min(t);
        }
        for h in &self.hosts {
            if let Some(t) = h.paused_until_ms {
                next = next.min(t);
            } else if h.is_up() {
                next = next.min(h.next_tick_ms);
                if let Some(b) = h.unsynced.front() {
                    next = next.min(b.due_ms);
                }
                if let Some(p) = &h.snapshot_pending {
                    next = next.min(p.0);
                }
            } else if let Some(t) = h.restart_at_ms {
                next = next.min(t);
            }
        }
        for c in &self.clients {
            match &c.op {
                Some(op) => {
                    next = next.min(op.deadline_ms).min(if op.at.is_none() { op.retry_at_ms } else { u64::MAX })
                }
                None if self.clients_on && self.history.len() < self.opts.ops_max => next = next.min(c.next_ms),
                None => {}
            }
        }
        if let Some(&(t, _, _)) = self.churn.iter().min_by_key(|c| c.0) {
            next = next.min(t);
        }
        if self.faults_on {
            next = next.min(self.next_fault_ms);
            if let Some(t) = self.heal_at_ms {
                next = next.min(t);
            }
        }
        self.now_ms = next.max(self.now_ms);
        let now = self.now_ms;

        // Paused servers whose pause is over resume (their clock missed the ticks meanwhile).
        for h in 0..self.hosts.len() {
            if self.hosts[h].paused_until_ms.is_some_and(|t| t <= now) {
                self.hosts[h].paused_until_ms = None;
                self.hosts[h].next_tick_ms = now + self.hosts[h].tick_ms;
                let id = self.hosts[h].id;
                self.log(|| format!("RESUME {id:?}"));
                // Requests queued while it was frozen, served first.
                for c in std::mem::take(&mut self.hosts[h].inbox) {
                    let waiting = self.clients[c].op.as_ref().is_some_and(|o| o.at == Some(id));
                    if waiting {
                        self.client_submit(c, h)?;
                    }
                }
            }
        }
        // Reactive faults aimed at new leaders.
        let due: Vec<(u64, NodeId, u64)> = self.churn.iter().copied().filter(|c| c.0 <= now).collect();
        self.churn.retain(|c| c.0 > now);
        for (_, id, what) in due {
            self.churn_leader(id, what)?;
        }
        // Faults first, so that their effect is visible to the rest of this instant.
        if self.faults_on {
            if self.heal_at_ms.is_some_and(|t| t <= now) {
                self.heal_at_ms = None;
                self.net.heal();
                self.log(|| "network healed".into());
            }
            if self.next_fault_ms <= now {
                self.inject_fault()?;
                self.next_fault_ms = now + self.rng.range(self.sc.fault_gap_ms / 2, self.sc.fault_gap_ms * 3 / 2);
            }
        }
        for h in 0..self.hosts.len() {
            if !self.hosts[h].is_up() && self.hosts[h].restart_at_ms.is_some_and(|t| t <= now) {
                self.report.restarts += 1;
                self.boot(h)?;
            }
        }
        self.operator()?;
        // Fsyncs that completed.
        for h in 0..self.hosts.len() {
            while self.hosts[h].is_live() && self.hosts[h].unsynced.front().is_some_and(|b| b.due_ms <= now) {
                if self.faults_on && self.rng.chance(self.sc.fsync_fail_per_million) {
                    // The fsync failed: abort; what reached the disk is up to the crash.
                    self.report.fsync_failures += 1;
                    self.crash(h, "fsync failed ")?;
                    break;
                }
                if let Some(b) = self.hosts[h].unsynced.pop_front() {
                    self.complete_batch(h, b)?;
                }
            }
        }
        // Snapshots whose write completed: only now does the core learn of them.
        for h in 0..self.hosts.len() {
            if self.hosts[h].is_live() && self.hosts[h].snapshot_pending.as_ref().is_some_and(|p| p.0 <= now) {
                self.finish_snapshot(h)?;
            }
        }
        if self.net.in_flight() > IN_FLIGHT_MAX {
            return Err(self.fail(format!("runaway: more than {IN_FLIGHT_MAX} messages in flight")));
        }
        // Messages.
        while let Some((from, to, msg)) = {
            let hosts = &self.hosts;
            self.net.pop_due(now, |id| hosts.get((id.0 - 1) as usize).is_some_and(|h| h.is_up()))
        } {
            if self.same_instant.0 == now {
                self.same_instant.1 += 1;
                if self.same_instant.1 > SAME_INSTANT_MESSAGES_MAX {
                    return Err(self.fail(format!(
                        "livelock: {SAME_INSTANT_MESSAGES_MAX} messages delivered without virtual time advancing"
                    )));
                }
            } else {
                self.same_instant = (now, 1);
            }
            let h = self.idx(to);
            if let Some(t) = self.hosts[h].paused_until_ms {
                let at = t + self.rng.range(0, self.sc.latency_ms * 2);
                self.net.deliver_at(at, from, to, msg);
                continue;
            }
            self.log(|| format!("{from:?} -> {to:?} {:?} {:?}", msg.term, msg.body));
            let Some(raw) = self.hosts[h].raw.as_mut() else {
                continue;
            };
            let before = raw.log().committed();
            let covered = commit_covered(&msg);
            if let Err(e) = raw.step(msg) {
                return Err(self.fail(format!("{to:?} rejected a message from {from:?}: {e}")));
            }
            if let Some(covered) = covered {
                self.check_follower_commit(h, covered, before)?;
            }
            self.drive(h)?;
        }
        // Ticks.
        for h in 0..self.hosts.len() {
            if self.hosts[h].is_live() && self.hosts[h].next_tick_ms <= now {
                self.hosts[h].next_tick_ms = now + self.hosts[h].tick_ms;
                let lazy = self.sc.lazy_commit_updates;
                if let Some(raw) = self.hosts[h].raw.as_mut() {
                    raw.tick();
                    if lazy {
                        raw.send_commit_updates();
                    }
                }
                self.drive(h)?;
            }
        }
        // Clients.
        for c in 0..self.clients.len() {
            self.client_step(c)?;
        }
        Ok(())
    }

    // ----- one server -------------------------------------------------------------------

    /// Handles `Ready`s until the server has nothing more to do, checking after each.
    fn drive(&mut self, h: usize) -> Result<(), Failure> {
        for _ in 0..READY_LOOP_MAX {
            let rd = match self.hosts[h].raw.as_mut() {
                Some(raw) if raw.has_ready() => raw.ready(),
                _ => return Ok(()),
            };
            self.handle_ready(h, rd)?;
            self.check_server(h)?;
        }
        Err(self.fail(format!("{:?} produced {READY_LOOP_MAX} Readys in a row", self.hosts[h].id)))
    }

    fn handle_ready(&mut self, h: usize, rd: Ready) -> Result<(), Failure> {
        let id = self.hosts[h].id;
        let now = self.now_ms;
        for ev in &rd.events {
            self.log(|| format!("{id:?} event {ev:?}"));
            match ev {
                Event::RoleChanged { role: StateRole::Leader, term, .. } => {
                    self.report.elections += 1;
                    self.check_leadership_durable(h, *term)?;
                    self.checker.observe_leader(id, *term).map_err(|v| self.fail(v.to_string()))?;
                    if self.faults_on && self.rng.chance(self.sc.churn_per_million) {
                        let at = now + self.rng.range(0, self.sc.latency_ms * 4);
                        let what = self.rng.below(3);
                        self.churn.push((at, id, what));
                    }
                }
                Event::ReadIndexFailed { ctx } => {
                    if let Some((c, s)) = parse_ctx(ctx) {
                        self.hosts[h].pending_reads.remove(&(c, s));
                        self.client_rejected(c, s, None);
                    }
                }
                Event::ConfChangeAborted { node } => {
                    self.report.conf_aborted += 1;
                    self.promoting = self.promoting.filter(|p| p.2 != *node);
                }
                Event::ConfChangeAppended { node, .. } => {
                    self.promoting = self.promoting.filter(|p| p.2 != *node);
                }
                Event::TransferAborted { .. } => self.report.transfers_aborted += 1,
                _ => {}
            }
        }
        // 1. Messages that need nothing durable.
        for m in rd.messages {
            self.check_outgoing(h, &m)?;
            self.net.send(now, m.from, m.to, m);
        }
        // 2. Snapshot bytes received.
        for c in rd.snapshot_chunks {
            let host = &mut self.hosts[h];
            if c.offset == 0 {
                host.incoming = Some((c.meta.clone(), Vec::new(), false));
            }
            match &mut host.incoming {
                Some((meta, data, done)) if *meta == c.meta && data.len() as u64 == c.offset => {
                    data.extend_from_slice(&c.data);
                    *done = c.done;
                }
                other => {
                    let have = other.as_ref().map(|(m, d, _)| (m.index, d.len()));
                    return Err(self.fail(format!(
                        "{id:?}: snapshot chunk for {:?} at offset {} does not continue what was received ({have:?})",
                        c.meta.index, c.offset
                    )));
                }
            }
        }
        // 3. Snapshot install.
        let mut install = None;
        if let Some(si) = rd.snapshot {
            let host = &mut self.hosts[h];
            let data = match host.incoming.take() {
                Some((meta, data, true)) if meta == si.meta => data,
                other => {
                    let have = other.map(|(m, d, done)| (m.index, d.len(), done));
                    return Err(self
                        .fail(format!("{id:?}: asked to install snapshot {:?} but received {have:?}", si.meta.index)));
                }
            };
            let Some(kv) = KvStore::restore(&data) else {
                return Err(self.fail(format!("{id:?}: installed snapshot does not decode")));
            };
            host.kv = kv;
            host.applied = si.meta.index;
            host.last_snapshot = si.meta.index;
            host.view.install(&si.meta, si.keep_log);
            self.report.snapshots_installed += 1;
            self.checker.observe_snapshot_restore(id, si.meta.index);
            self.log(|| format!("{id:?} installs snapshot {:?} keep_log {}", si.meta.index, si.keep_log));
            install = Some((si.meta, data, si.keep_log));
        }
        // 4. Entries, recorded for log matching as they are written; a leader's own new
        //    entries only once durable (until then no one else can have seen them: if they
        //    are lost in a crash, the same index and term may be reused harmlessly).
        // (A leader-elect reports itself a candidate; a real candidate appends nothing.)
        let own =
            self.hosts[h].raw.as_ref().is_some_and(|r| matches!(r.role(), StateRole::Leader | StateRole::Candidate));
        let mut deferred = Vec::new();
        if let Some(first) = rd.entries.first() {
            let view = &self.hosts[h].view;
            let Some(mut prev) = view.term_at(first.index.prev()) else {
                let last = view.last_index();
                return Err(self.fail(format!(
                    "{id:?}: Ready entries start at {:?}, after a hole (log ends at {last:?})",
                    first.index
                )));
            };
            for e in &rd.entries {
                if own {
                    deferred.push((entry_id(e), prev));
                } else {
                    self.checker.observe_append(id, entry_id(e), prev).map_err(|v| self.fail(v.to_string()))?;
                }
                prev = e.term;
            }
            self.hosts[h].view.append(&rd.entries);
        }
        // A crash aimed at the fsync window of a new term or vote.
        if let Some(hs) = rd.hard_state {
            let prev = std::mem::replace(&mut self.hosts[h].last_hard, hs);
            if (hs.term, hs.vote) != (prev.term, prev.vote)
                && self.faults_on
                && self.sc.fsync_ms_max > 0
                && self.rng.chance(self.sc.crash_after_vote_per_million)
            {
                self.churn.push((now, id, 3));
            }
        }
        // 5-6. Durability, then persisted and the messages that wait for it.
        let marker = match (rd.entries.last(), &install) {
            (Some(e), _) => Some((e.index, e.term)),
            (None, Some((m, _, _))) => Some((m.index, m.term)),
            _ => None,
        };
        let batch = Batch {
            due_ms: 0,
            hard: rd.hard_state,
            install,
            entries: rd.entries,
            marker,
            messages: rd.persisted_messages,
            observe: deferred,
        };
        if self.sc.fsync_ms_max == 0 {
            self.complete_batch(h, batch)?;
        } else {
            let last_due = self.hosts[h].unsynced.back().map_or(0, |b| b.due_ms);
            let due = (now + self.fsync_delay()).max(last_due);
            self.hosts[h].unsynced.push_back(Batch { due_ms: due, ..batch });
        }
        // 7. Apply.
        if !rd.committed_entries.is_empty() {
            self.observe_commit(h)?;
        }
        for e in rd.committed_entries {
            let applied = self.hosts[h].applied;
            if e.index <= applied {
                // Already covered by a snapshot installed in this same Ready.
                continue;
            }
            if e.index != applied.next() {
                return Err(
                    self.fail(format!("{id:?}: committed entry {:?} handed out after applied {applied:?}", e.index))
                );
            }
            self.checker.observe_apply(id, entry_id(&e)).map_err(|v| self.fail(v.to_string()))?;
            let host = &mut self.hosts[h];
            host.applied = e.index;
            if e.kind == EntryKind::Command {
                let Some(cmd) = Command::decode(&e.data) else {
                    return Err(self.fail(format!("{id:?}: entry {:?} is not a command", e.index)));
                };
                let out = host.kv.apply(&cmd.op);
                let answered = host.pending_props.remove(&(cmd.client, cmd.seq));
                if !self.effects.contains_key(&(cmd.client, cmd.seq)) {
                    let t = self.tick_clock();
                    self.effects.insert((cmd.client, cmd.seq), (t, out.clone()));
                }
                if answered {
                    self.client_done(cmd.client, cmd.seq, out, Some(e.index))?;
                }
            }
        }
        let applied = self.hosts[h].applied;
        if let Some(raw) = self.hosts[h].raw.as_mut() {
            if let Err(e) = raw.applied(applied) {
                return Err(self.fail(format!("{id:?}: applied({applied:?}) refused: {e}")));
            }
        }
        // 8. Reads.
        for r in rd.read_states {
            let applied = self.hosts[h].applied;
            if applied < r.index {
                return Err(
                    self.fail(format!("{id:?}: read state at {:?} handed out with applied {applied:?}", r.index))
                );
            }
            let host = &mut self.hosts[h];
            if let Some((c, s)) = parse_ctx(&r.ctx) {
                if host.pending_reads.remove(&(c, s)) {
                    let key = self.clients[c as usize]
                        .op
                        .as_ref()
                        .filter(|o| o.cmd.seq == s)
                        .map(|o| o.cmd.op.key().to_owned());
                    if let Some(key) = key {
                        let v = self.hosts[h].kv.map.get(&key).cloned();
                        self.client_done(c, s, KvOutput::Value(v), Some(r.index))?;
                    }
                }
            }
        }
        // 9. Snapshot bytes the leader must send.
        for req in rd.snapshot_requests {
            if self.faults_on && self.rng.chance(self.sc.read_error_per_million) {
                // The chunk could not be read: not sent; the leader asks again.
                self.report.read_errors += 1;
                continue;
            }
            if self.sc.live_snapshots {
                self.serve_live_snapshot(h, &req)?;
                continue;
            }
            let current = self.hosts[h].disk.snapshot.as_ref().map(|s| s.0.index);
            if current.is_none() || self.hosts[h].disk.snapshot.as_ref().map(|s| &s.0) != Some(&req.meta) {
                return Err(
                    self.fail(format!("{id:?}: snapshot {:?} requested, current is {current:?}", req.meta.index))
                );
            }
            let host = &mut self.hosts[h];
            let Some((_, data)) = &host.disk.snapshot else { continue };
            let start = (req.offset as usize).min(data.len());
            let end = (start + req.max_bytes as usize).min(data.len());
            let chunk = data[start..end].to_vec();
            let done = end == data.len();
            if let Some(raw) = host.raw.as_mut() {
                // Stale requests are refused; that is allowed.
                let _ = raw.send_snapshot_chunk(&req, chunk, done);
            }
        }
        self.maybe_snapshot(h)
    }

    /// How long one fsync takes: usually up to `fsync_ms_max`, sometimes a heavy tail.
    fn fsync_delay(&mut self) -> u64 {
        let mut d = self.rng.range(0, self.sc.fsync_ms_max);
        if self.faults_on && self.rng.chance(self.sc.fsync_tail_per_million) {
            d += self.rng.range(0, self.sc.fsync_tail_ms);
            self.report.fsync_tails += 1;
        }
        d
    }

    /// Live-snapshot scenarios: the application has no snapshot file to send. For a request
    /// at offset 0 it captures its state machine now (unless it already holds an image of the
    /// requested snapshot) and tells the core, which restarts the transfer with that snapshot;
    /// later chunks come from the same image.
    fn serve_live_snapshot(&mut self, h: usize, req: &crate::ready::SnapshotChunkRequest) -> Result<(), Failure> {
        let host = &mut self.hosts[h];
        let Some(raw) = host.raw.as_mut() else { return Ok(()) };
        let data = match &host.serving {
            Some((m, d)) if *m == req.meta => d.clone(),
            _ if req.offset == 0 => {
                let applied = host.applied;
                let meta = match raw.snapshot_taken(applied) {
                    Ok(m) => m,
                    // Older than the current snapshot (just installed one): serve nothing;
                    // the leader asks again.
                    Err(_) => return Ok(()),
                };
                let data = host.kv.snapshot();
                host.serving = Some((meta.clone(), data.clone()));
                self.report.live_snapshots += 1;
                if meta != req.meta {
                    return Ok(());
                }
                data
            }
            _ => return Ok(()),
        };
        let start = (req.offset as usize).min(data.len());
        let end = (start + req.max_bytes as usize).min(data.len());
        // Stale requests are refused; that is allowed.
        let _ = raw.send_snapshot_chunk(req, data[start..end].to_vec(), end == data.len());
        Ok(())
    }

    fn complete_batch(&mut self, h: usize, b: Batch) -> Result<(), Failure> {
        let id = self.hosts[h].id;
        if let Some(hs) = b.hard {
            self.check_hard_state(h, hs)?;
        }
        for &(e, prev) in &b.observe {
            self.checker.observe_append(id, e, prev).map_err(|v| self.fail(v.to_string()))?;
        }
        if let Err(e) = b.write_to(&mut self.hosts[h].disk) {
            return Err(self.fail(format!("{id:?}: {e}")));
        }
        if let Some(raw) = self.hosts[h].raw.as_mut() {
            if let Some((i, t)) = b.marker {
                raw.persisted(i, t);
            }
        }
        for m in b.messages {
            self.check_outgoing(h, &m)?;
            self.net.send(self.now_ms, m.from, m.to, m);
        }
        if self.sc.fsync_ms_max > 0 {
            self.drive(h)?;
        }
        Ok(())
    }

    /// Every message that promises something about the sender's term or vote must be covered
    /// by its *durable* hard state when it leaves: a vote request by a durable vote for itself,
    /// a granted vote by a durable vote for the candidate (or a later durable term), and any
    /// leader message by a durable term at least the message's. (Pre-votes promise nothing.)
    fn check_outgoing(&self, h: usize, m: &Message) -> Result<(), Failure> {
        use crate::message::MessageBody as B;
        let d = self.hosts[h].disk.hard;
        let voted = |who: NodeId| d.term > m.term || (d.term == m.term && d.vote == Some(who));
        let bad = match &m.body {
            B::RequestVote(_) => (!voted(m.from)).then_some("vote request before its own vote is durable"),
            B::RequestVoteResponse(r) if r.granted => (!voted(m.to)).then_some("vote granted before it is durable"),
            B::AppendEntries(_) | B::Heartbeat(_) | B::InstallSnapshot(_) | B::TimeoutNow => {
                (d.term < m.term).then_some("leader message before its term is durable")
            }
            _ => None,
        };
        match bad {
            Some(what) => Err(self.fail(format!(
                "{:?} sent {:?} in {:?} with durable term {:?} vote {:?}: {what}",
                m.from, m.body, m.term, d.term, d.vote
            ))),
            None => Ok(()),
        }
    }

    /// The application is told "you lead `term`" (role, `is_leader`, known leader, or a
    /// `RoleChanged` event) only once `term` is durable: otherwise a crash could bring the
    /// server back in an earlier term, vote for another server in `term`, and two servers would
    /// have been announced leader of it (finding F2).
    fn check_leadership_durable(&self, h: usize, term: Term) -> Result<(), Failure> {
        let d = self.hosts[h].disk.hard;
        if d.term < term {
            return Err(self.fail(format!(
                "{:?} announced leadership of {term:?} with durable term {:?}",
                self.hosts[h].id, d.term
            )));
        }
        Ok(())
    }

    /// Figure 2, AppendEntries rule 5 and its heartbeat analogue: a follower's commit index
    /// never passes what the leader's message covered: `min(leaderCommit, index of the last new
    /// entry)` for an append, the heartbeat's commit for a heartbeat.
    fn check_follower_commit(&self, h: usize, covered: LogIndex, before: LogIndex) -> Result<(), Failure> {
        let Some(raw) = self.hosts[h].raw.as_ref() else { return Ok(()) };
        let after = raw.log().committed();
        if after > before.max(covered) {
            return Err(self.fail(format!(
                "{:?}: commit went {before:?} -> {after:?} on a leader message that covers only up to {covered:?}",
                self.hosts[h].id
            )));
        }
        Ok(())
    }

    /// A durable vote must never change within a term, and the durable term never goes back.
    fn check_hard_state(&mut self, h: usize, new: HardState) -> Result<(), Failure> {
        let old = self.hosts[h].disk.hard;
        let id = self.hosts[h].id;
        if new.term < old.term {
            return Err(self.fail(format!("{id:?}: durable term went back {:?} -> {:?}", old.term, new.term)));
        }
        if new.term == old.term && old.vote.is_some() && new.vote != old.vote {
            return Err(self.fail(format!(
                "{id:?}: durable vote changed within {:?}: {:?} -> {:?}",
                new.term, old.vote, new.vote
            )));
        }
        Ok(())
    }

    fn observe_commit(&mut self, h: usize) -> Result<(), Failure> {
        let host = &self.hosts[h];
        let Some(raw) = host.raw.as_ref() else { return Ok(()) };
        let (commit, term) = (raw.log().committed(), raw.term());
        let view = &host.view;
        self.checker
            .observe_commit(host.id, term, commit, |i| view.entry(i).map(entry_id))
            .map_err(|v| self.fail(v.to_string()))
    }

    /// Checks run after every `Ready` of server `h`.
    fn check_server(&mut self, h: usize) -> Result<(), Failure> {
        self.observe_commit(h)?;
        let host = &self.hosts[h];
        let Some(raw) = host.raw.as_ref() else { return Ok(()) };
        let id = host.id;
        // The log the Readys described is the core's log.
        let (core_last, view_last) = (raw.log().last_index(), host.view.last_index());
        if core_last != view_last || raw.log().last_term() != host.view.term_at(view_last).unwrap_or(Term(0)) {
            return Err(self.fail(format!(
                "{id:?}: the core's log ends at {core_last:?}/{:?} but its Readys wrote up to {view_last:?}/{:?}",
                raw.log().last_term(),
                host.view.term_at(view_last)
            )));
        }
        if raw.role() == StateRole::Leader || raw.is_leader() || raw.leader() == Some(id) {
            let term = raw.term();
            self.check_leadership_durable(h, term)?;
            let host = &self.hosts[h];
            let base = host.view.base.0;
            let view = &host.view;
            self.checker.observe_leader(id, term).map_err(|v| self.fail(v.to_string()))?;
            self.checker
                .check_leader_complete(id, term, base, |i| view.entry(i).map(|e| (e.term, digest(e.kind, &e.data))))
                .map_err(|v| self.fail(v.to_string()))?;
        }
        Ok(())
    }

    /// Starts writing a snapshot of the state machine every `snapshot_every` applied entries.
    /// The write takes an fsync's time; the core is told (`snapshot_taken`) and the log is
    /// compacted only once it is durable ([`Cluster::finish_snapshot`]).
    fn maybe_snapshot(&mut self, h: usize) -> Result<(), Failure> {
        let Some(every) = self.sc.snapshot_every else { return Ok(()) };
        if self.hosts[h].snapshot_pending.is_some() || self.hosts[h].raw.is_none() {
            return Ok(());
        }
        if self.hosts[h].applied < LogIndex(self.hosts[h].last_snapshot.0 + every) {
            return Ok(());
        }
        let index = self.hosts[h].applied;
        let image = self.hosts[h].kv.snapshot();
        let due = self.now_ms + if self.sc.fsync_ms_max == 0 { 0 } else { self.fsync_delay() };
        self.hosts[h].snapshot_pending = Some((due, index, image));
        self.hosts[h].last_snapshot = index;
        if due <= self.now_ms {
            self.finish_snapshot(h)?;
        }
        Ok(())
    }

    fn finish_snapshot(&mut self, h: usize) -> Result<(), Failure> {
        let host = &mut self.hosts[h];
        // Stored in order with the writes of the `Ready`s before it, as a real storage queue
        // does: a received snapshot still waiting for its fsync must not land on top of this
        // newer one (it would set the durable base back and lose the entries compacted here).
        if let Some(last_due) = host.unsynced.back().map(|b| b.due_ms) {
            if let Some(p) = host.snapshot_pending.as_mut() {
                p.0 = p.0.max(last_due);
            }
            return Ok(());
        }
        let Some((_, index, image)) = host.snapshot_pending.take() else { return Ok(()) };
        let Some(raw) = host.raw.as_mut() else { return Ok(()) };
        if raw.snapshot_meta().is_some_and(|m| m.index >= index)
            || host.disk.snapshot.as_ref().is_some_and(|s| s.0.index >= index)
        {
            // A newer snapshot was installed (or captured) meanwhile: this one is obsolete.
            return Ok(());
        }
        let meta = match raw.snapshot_taken(index) {
            Ok(m) => m,
            Err(e) => {
                let id = host.id;
                return Err(self.fail(format!("{id:?}: snapshot_taken({index:?}) refused: {e}")));
            }
        };
        let trailing = self.sc.trailing;
        let to = raw.compact(LogIndex(index.0.saturating_sub(trailing)));
        host.disk.take_snapshot(meta, image, to);
        host.view.compact(to);
        self.report.snapshots_taken += 1;
        Ok(())
    }

    // ----- clients ----------------------------------------------------------------------

    fn tick_clock(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn client_step(&mut self, c: usize) -> Result<(), Failure> {
        let now = self.now_ms;
        if let Some(op) = &self.clients[c].op {
            if op.deadline_ms <= now {
                // Gave up: the outcome stays unknown (response None).
                let (seq, at) = (op.cmd.seq, op.at);
                self.report.timeouts += 1;
                if let Some(at) = at {
                    let h = self.idx(at);
                    self.hosts[h].pending_reads.remove(&(c as u64, seq));
                }
                self.clients[c].op = None;
                // Half the clients keep trusting the server that timed out (it may be a
                // deposed leader that is merely slow).
                if self.rng.below(2) == 0 {
                    self.clients[c].leader_hint = None;
                }
                self.clients[c].next_ms = now + self.rng.range(0, 20);
                return Ok(());
            }
            if op.at.is_none() && op.retry_at_ms <= now {
                return self.client_send(c);
            }
            return Ok(());
        }
        if !self.clients_on || self.clients[c].next_ms > now || self.history.len() >= self.opts.ops_max {
            return Ok(());
        }
        let client = &mut self.clients[c];
        client.seq += 1;
        let seq = client.seq;
        let k = self.rng.below(self.sc.keys as u64) as usize;
        let key = format!("k{k}");
        let cid = client.id;
        let (op, via_read_index) = match self.rng.below(100) {
            0..=19 => (KvInput::Get(key), true),
            20..=34 => (KvInput::Get(key), false),
            35..=49 => (KvInput::Put(key, format!("p[{cid}.{seq}]")), false),
            50..=89 => (KvInput::Append(key, format!("[{cid}.{seq}]")), false),
            _ => (
                KvInput::Cas { key, expected: self.clients[c].last_seen[k].clone(), new: format!("c[{cid}.{seq}]") },
                false,
            ),
        };
        let invoke = self.tick_clock();
        self.history_seq.insert(invoke, seq);
        self.history.push(Operation { client: cid, input: op.clone(), invoke, response: None });
        self.clients[c].op = Some(ClientOp {
            hist: self.history.len() - 1,
            cmd: Command { client: cid, seq, op },
            via_read_index,
            committed_at_invoke: self.checker.committed_index(),
            deadline_ms: now + self.sc.client_timeout_ms,
            at: None,
            retry_at_ms: now,
        });
        self.client_send(c)
    }

    fn client_send(&mut self, c: usize) -> Result<(), Failure> {
        let target = match self.clients[c].leader_hint {
            Some(l) if self.rng.below(10) != 0 => l,
            _ => {
                let started: Vec<NodeId> = self.hosts.iter().filter(|h| h.started).map(|h| h.id).collect();
                match self.rng.pick(&started) {
                    Some(&id) => id,
                    None => return Ok(()),
                }
            }
        };
        let h = self.idx(target);
        if self.hosts[h].paused_until_ms.is_some() {
            // The kernel accepts the connection and queues the request: the process serves
            // it the moment it wakes up, before it has heard of anything that happened meanwhile.
            if !self.hosts[h].inbox.contains(&c) {
                self.hosts[h].inbox.push(c);
            }
            if let Some(op) = self.clients[c].op.as_mut() {
                op.at = Some(target);
            }
            return Ok(());
        }
        self.client_submit(c, h)
    }

    /// Hands client `c`'s pending operation to server `h`.
    fn client_submit(&mut self, c: usize, h: usize) -> Result<(), Failure> {
        let target = self.hosts[h].id;
        let Some(op) = self.clients[c].op.as_ref() else { return Ok(()) };
        let (cmd, via_ri) = (op.cmd.clone(), op.via_read_index);
        let Some(raw) = self.hosts[h].raw.as_mut() else {
            // Connection refused: definitely not executed.
            self.client_rejected(c as u64, cmd.seq, None);
            return Ok(());
        };
        if self.opts.trace {
            let line = format!(
                "{:>7}ms client {} seq {} submits {:?} to {target:?} (read_index {via_ri})",
                self.now_ms, cmd.client, cmd.seq, cmd.op
            );
            TRACE.with(|tr| tr.borrow_mut().push(line));
        }
        let res = if via_ri {
            raw.read_index(ctx_of(cmd.client, cmd.seq)).map(|_| ())
        } else {
            raw.propose(cmd.encode()).map(|_| ())
        };
        match res {
            Ok(()) => {
                if via_ri {
                    self.hosts[h].pending_reads.insert((cmd.client, cmd.seq));
                } else {
                    self.hosts[h].pending_props.insert((cmd.client, cmd.seq));
                }
                if let Some(op) = self.clients[c].op.as_mut() {
                    op.at = Some(target);
                }
                self.clients[c].leader_hint = Some(target);
                self.drive(h)
            }
            Err(crate::Error::NotLeader { leader }) => {
                self.client_rejected(c as u64, cmd.seq, leader);
                Ok(())
            }
            Err(_) => {
                self.client_rejected(c as u64, cmd.seq, None);
                Ok(())
            }
        }
    }

    /// A definite "not executed": the client retries the same operation shortly.
    fn client_rejected(&mut self, client: u64, seq: u64, hint: Option<NodeId>) {
        let now = self.now_ms;
        let backoff = self.rng.range(1, 30);
        let cl = &mut self.clients[client as usize];
        if let Some(op) = cl.op.as_mut().filter(|o| o.cmd.seq == seq) {
            op.at = None;
            op.retry_at_ms = now + backoff;
            cl.leader_hint = hint;
        }
    }

    /// Client `client`'s operation `seq` is answered with `out`, served at log index `index`
    /// (a write's entry, a read's entry or read index). Fails if a read is served below what
    /// was known committed when it was invoked (a stale read, even one the history check could
    /// not see because nothing overwrote the key).
    fn client_done(&mut self, client: u64, seq: u64, out: KvOutput, index: Option<LogIndex>) -> Result<(), Failure> {
        if let (Some(op), Some(i)) = (self.clients[client as usize].op.as_ref(), index) {
            if op.cmd.seq == seq && matches!(op.cmd.op, KvInput::Get(_)) && i < op.committed_at_invoke {
                return Err(self.fail(format!(
                    "stale read: client {client} seq {seq} served at index {i:?}, but {:?} was committed when it was invoked",
                    op.committed_at_invoke
                )));
            }
        }
        let t = self.tick_clock();
        let cl = &mut self.clients[client as usize];
        let Some(op) = cl.op.take_if(|o| o.cmd.seq == seq) else {
            return Ok(());
        };
        if let (KvOutput::Value(v), Some(k)) = (&out, op.cmd.op.key().strip_prefix('k')) {
            if let Ok(k) = k.parse::<usize>() {
                cl.last_seen[k] = v.clone();
            }
        }
        if let KvInput::Cas { key, new, .. } = &op.cmd.op {
            if out == KvOutput::Swapped(true) {
                if let Ok(k) = key[1..].parse::<usize>() {
                    cl.last_seen[k] = Some(new.clone());
                }
            }
        }
        cl.next_ms = self.now_ms + self.rng.range(0, self.sc.think_ms);
        if self.opts.trace {
            let line = format!("{:>7}ms client {client} #{} {:?} -> {out:?}", self.now_ms, op.hist, op.cmd.op);
            TRACE.with(|tr| tr.borrow_mut().push(line));
        }
        self.history[op.hist].response = Some((t, out));
        self.report.ops_ok += 1;
        if let Some(i) = index {
            if !matches!(op.cmd.op, KvInput::Get(_)) && i > self.acked_max {
                self.acked_max = i;
            }
        }
        Ok(())
    }

    // ----- faults -----------------------------------------------------------------------

    fn inject_fault(&mut self) -> Result<(), Failure> {
        let started: Vec<usize> = (0..self.hosts.len()).filter(|&h| self.hosts[h].started).collect();
        let up: Vec<usize> = started.iter().copied().filter(|&h| self.hosts[h].is_up()).collect();
        let ids: Vec<NodeId> = started.iter().map(|&h| self.hosts[h].id).collect();
        let w = &self.sc.weights;
        let total: u64 = w.iter().sum();
        let mut r = self.rng.below(total.max(1));
        let mut kind = 0;
        for (i, &x) in w.iter().enumerate() {
            if r < x {
                kind = i;
                break;
            }
            r -= x;
        }
        match kind {
            0 => {
                // Crash a server; half the time one with writes still waiting for their fsync,
                // where a broken persistence contract shows.
                let unsynced: Vec<usize> = up.iter().copied().filter(|&h| !self.hosts[h].unsynced.is_empty()).collect();
                let pool = if !unsynced.is_empty() && self.rng.below(2) == 0 { &unsynced } else { &up };
                if let Some(&h) = self.rng.pick(pool) {
                    self.crash(h, "")?;
                }
            }
            1 => {
                // Symmetric partition into two random groups.
                let mut v = ids.clone();
                self.rng.shuffle(&mut v);
                let cut = self.rng.range(1, v.len().max(2) as u64 - 1) as usize;
                let (a, b) = v.split_at(cut.min(v.len()));
                self.net.partition(a, b);
                self.schedule_heal();
                self.report.partitions += 1;
                let (a, b) = (a.to_vec(), b.to_vec());
                self.log(|| format!("PARTITION {a:?} | {b:?}"));
            }
            2 => {
                // One-way cuts.
                for _ in 0..self.rng.range(1, 3) {
                    if let (Some(&x), Some(&y)) = (self.rng.pick(&ids), self.rng.pick(&ids)) {
                        if x != y {
                            self.net.cut_one_way(x, y);
                            self.log(|| format!("CUT {x:?} -> {y:?}"));
                        }
                    }
                }
                self.schedule_heal();
                self.report.partitions += 1;
            }
            3 => {
                // Isolate the leader.
                if let Some(l) = self.leader() {
                    let id = self.hosts[l].id;
                    self.net.isolate(id, &ids);
                    self.schedule_heal();
                    self.report.partitions += 1;
                    self.log(|| format!("ISOLATE leader {id:?}"));
                }
            }
            4 => self.change_membership()?,
            5 => {
                if let Some(l) = self.leader() {
                    let voters: Vec<NodeId> =
                        self.hosts[l].raw.as_ref().map(|r| r.configuration().voters().collect()).unwrap_or_default();
                    let target = if self.rng.below(2) == 0 { None } else { self.rng.pick(&voters).copied() };
                    if let Some(raw) = self.hosts[l].raw.as_mut() {
                        let res = raw.transfer_leadership(target);
                        self.report.transfers += u64::from(res.is_ok());
                        self.log(|| format!("TRANSFER to {target:?}: {res:?}"));
                    }
                    self.drive(l)?;
                }
            }
            6 => {
                // Network weather: change delays and loss.
                self.net.config = self.sc.random_net(&mut self.rng);
                let cfg = self.net.config.clone();
                self.log(|| format!("NET {cfg:?}"));
            }
            7 => {
                if let Some(l) = self.leader() {
                    if let Some(raw) = self.hosts[l].raw.as_mut() {
                        let _ = raw.barrier();
                    }
                    self.drive(l)?;
                }
            }
            8 => {
                // Crash the leader, typically with entries only partly replicated.
                if let Some(l) = self.leader() {
                    self.crash(l, "leader ")?;
                }
            }
            10 => {
                // Pause a server (GC, VM migration): it misses ticks and input for a while.
                if let Some(&h) = self.rng.pick(&up) {
                    let ms = self.rng.range(self.sc.tick_ms, self.sc.down_ms_max);
                    self.hosts[h].paused_until_ms = Some(self.now_ms + ms);
                    self.report.pauses += 1;
                    let id = self.hosts[h].id;
                    self.log(|| format!("PAUSE {id:?} for {ms} ms"));
                }
            }
            11 | 12 => {
                // Bit rot in a stored entry (found at the next restart), or a lost disk. The
                // server must rejoin as a new, empty one after the operator removed it: one at
                // a time, never a voter of fewer than three.
                let Some(l) = self.leader() else { return Ok(()) };
                if self.hosts.iter().any(|x| x.wiped || x.corrupt) {
                    return Ok(());
                }
                // Only against a settled configuration (a change in flight may still lower the
                // number of voters): a lost voter of two cannot be removed without a quorum.
                let Some(conf) = self.hosts[l]
                    .raw
                    .as_ref()
                    .filter(|r| r.configuration_index() <= r.log().committed())
                    .map(|r| r.configuration().clone())
                else {
                    return Ok(());
                };
                // Every server's view counts (one may hold a change the leader does not), and a
                // server being caught up for promotion is left alone.
                let mut views = self.configurations();
                views.push(conf);
                let promoting = self.promotion_pending();
                let pool: Vec<usize> = started
                    .iter()
                    .copied()
                    .filter(|&x| {
                        let id = self.hosts[x].id;
                        promoting != Some(id) && views.iter().all(|c| !c.is_voter(id) || c.voter_count() >= 3)
                    })
                    .collect();
                let Some(&h) = self.rng.pick(&pool) else { return Ok(()) };
                let id = self.hosts[h].id;
                if self.hosts[h].is_up() {
                    self.crash(h, if kind == 11 { "with a corrupt entry " } else { "before a disk wipe " })?;
                }
                if kind == 11 {
                    if self.hosts[h].corrupt_entry(&mut self.crash_rng) {
                        self.report.corruptions += 1;
                        self.log(|| format!("CORRUPT a stored entry of {id:?}"));
                    }
                } else {
                    self.hosts[h].wipe();
                    self.report.wipes += 1;
                    self.log(|| format!("WIPE the disk of {id:?}"));
                }
            }
            _ => {
                // Cut the leader off from a random subset of the others (both ways).
                if let Some(l) = self.leader() {
                    let id = self.hosts[l].id;
                    let mut others: Vec<NodeId> = ids.iter().copied().filter(|&x| x != id).collect();
                    self.rng.shuffle(&mut others);
                    let n = self.rng.range(1, others.len().max(1) as u64) as usize;
                    let cut: Vec<NodeId> = others.into_iter().take(n).collect();
                    self.net.partition(&[id], &cut);
                    self.schedule_heal();
                    self.report.partitions += 1;
                    self.log(|| format!("CUT leader {id:?} from {cut:?}"));
                }
            }
        }
        Ok(())
    }

    /// A reactive fault: on a leader elected moments ago, if it still leads (`what` 0 to 2),
    /// or a crash of any running server (`what` 3).
    fn churn_leader(&mut self, id: NodeId, what: u64) -> Result<(), Failure> {
        let h = self.idx(id);
        if what == 3 {
            if self.hosts[h].is_up() {
                self.crash(h, "after a vote ")?;
            }
            return Ok(());
        }
        if !self.hosts[h].is_live() || self.hosts[h].raw.as_ref().is_none_or(|r| r.role() != StateRole::Leader) {
            return Ok(());
        }
        let ids: Vec<NodeId> = self.hosts.iter().filter(|x| x.started && x.id != id).map(|x| x.id).collect();
        match what {
            0 => self.crash(h, "new leader ")?,
            1 => {
                self.net.isolate(id, &ids);
                self.schedule_heal();
                self.log(|| format!("ISOLATE new leader {id:?}"));
            }
            _ => {
                let mut others = ids;
                self.rng.shuffle(&mut others);
                let n = self.rng.range(1, others.len().max(1) as u64) as usize;
                let cut: Vec<NodeId> = others.into_iter().take(n).collect();
                self.net.partition(&[id], &cut);
                self.schedule_heal();
                self.log(|| format!("CUT new leader {id:?} from {cut:?}"));
            }
        }
        self.report.churned += 1;
        Ok(())
    }

    /// Kills server `h` and schedules its restart: usually after a while, sometimes at once
    /// (a bounce, so that messages sent to its previous life still arrive).
    fn crash(&mut self, h: usize, label: &str) -> Result<(), Failure> {
        let (what, surviving) = self.hosts[h].crash(&mut self.crash_rng).map_err(|e| self.fail(e))?;
        let id = self.hosts[h].id;
        for (e, prev) in surviving {
            self.checker.observe_append(id, e, prev).map_err(|v| self.fail(v.to_string()))?;
        }
        let down_ms = if self.rng.below(3) == 0 {
            self.rng.range(1, 2 * self.sc.latency_ms)
        } else {
            self.rng.range(self.sc.down_ms_max / 10, self.sc.down_ms_max).max(1)
        };
        self.hosts[h].restart_at_ms = Some(self.now_ms + down_ms);
        self.report.crashes += 1;
        self.log(|| format!("CRASH {label}{id:?} ({what}), back in {down_ms} ms"));
        Ok(())
    }

    /// The server a membership change is still catching up, if that change can still complete
    /// (its leader still leads its term).
    fn promotion_pending(&self) -> Option<NodeId> {
        let (l, term, target) = self.promoting?;
        let h = &self.hosts[self.idx(l)];
        h.raw.as_ref().filter(|r| r.is_leader() && r.term() == term).map(|_| target)
    }

    /// The configuration each started server has (running: in force; down: the latest in its
    /// stored log or snapshot).
    fn configurations(&self) -> Vec<Configuration> {
        let mut out = Vec::new();
        for h in self.hosts.iter().filter(|h| h.started && !h.wiped) {
            if let Some(r) = &h.raw {
                out.push(r.configuration().clone());
                continue;
            }
            let stored = h.disk.log.iter().rev().find(|e| e.kind == EntryKind::Configuration);
            match stored.and_then(|e| Configuration::decode(&e.data).ok()) {
                Some(c) => out.push(c),
                None => out.extend(h.disk.snapshot.as_ref().map(|s| s.0.configuration.clone())),
            }
        }
        out
    }

    /// What an operator does about a wiped server: remove it from the configuration (it
    /// lost its votes and acknowledged entries, so it must not come back as the same member),
    /// and once that removal is committed, bring the machine back empty under a *new* id,
    /// which membership changes may add. (Reusing the id is unsafe even after the removal: a
    /// server with a stale configuration still counts the old id as a voter, and the empty
    /// server would vote for it; see F3 in `SIM_FINDINGS.md`.)
    fn operator(&mut self) -> Result<(), Failure> {
        for h in 0..self.hosts.len() {
            if !self.hosts[h].wiped {
                continue;
            }
            let id = self.hosts[h].id;
            let Some(l) = self.leader() else { return Ok(()) };
            let Some(raw) = self.hosts[l].raw.as_mut() else { return Ok(()) };
            let settled = raw.configuration_index() <= raw.log().committed();
            if raw.configuration().get(id).is_some() {
                if settled && raw.is_leader() {
                    if let Ok(st) = raw.propose_conf_change(ConfChange::Remove { id }) {
                        self.log(|| format!("OPERATOR removes wiped {id:?}: {st:?}"));
                        self.drive(l)?;
                    }
                }
            } else if settled && self.promotion_pending() != Some(id) {
                let tick_ms = self.hosts[h].tick_ms;
                let old = &mut self.hosts[h];
                old.wiped = false;
                old.retired = true;
                old.started = false;
                let new_id = NodeId(self.hosts.len() as u64 + 1);
                let mut fresh = Host::new(new_id);
                fresh.tick_ms = tick_ms;
                self.hosts.push(fresh);
                self.report.rejoined += 1;
                self.log(|| format!("OPERATOR: {id:?} removed; the machine comes back empty as {new_id:?}"));
            }
        }
        Ok(())
    }

    fn schedule_heal(&mut self) {
        let t = self.now_ms + self.rng.range(self.sc.partition_ms_max / 10, self.sc.partition_ms_max).max(1);
        self.heal_at_ms = Some(self.heal_at_ms.map_or(t, |x| x.max(t)));
    }

    fn change_membership(&mut self) -> Result<(), Failure> {
        if self.hosts.iter().any(|x| x.wiped || x.corrupt) {
            // The operator's removal of a wiped server goes first.
            return Ok(());
        }
        let Some(l) = self.leader() else { return Ok(()) };
        let Some(raw) = self.hosts[l].raw.as_ref() else { return Ok(()) };
        let conf = raw.configuration().clone();
        let members: Vec<NodeId> = conf.servers().iter().map(|s| s.id).collect();
        let all: Vec<NodeId> = self.hosts.iter().map(|h| h.id).collect();
        let outsiders: Vec<NodeId> =
            all.iter().copied().filter(|id| !members.contains(id) && !self.hosts[self.idx(*id)].retired).collect();
        let roles = [Role::Voter, Role::Standby, Role::Spare];
        let role = roles[self.rng.below(3) as usize];
        let cc = match self.rng.below(3) {
            0 if !outsiders.is_empty() => {
                let Some(&id) = self.rng.pick(&outsiders) else { return Ok(()) };
                let h = self.idx(id);
                if !self.hosts[h].is_up() {
                    if self.hosts[h].started {
                        return Ok(());
                    }
                    self.hosts[h].started = true;
                    self.boot(h)?;
                }
                ConfChange::Add { id, address: format!("sim-{}", id.0), role }
            }
            1 => {
                let Some(&id) = self.rng.pick(&members) else { return Ok(()) };
                if conf.voter_count() >= 5 && role == Role::Voter {
                    return Ok(());
                }
                ConfChange::Assign { id, role }
            }
            _ => {
                // Keep at least two replicas so the scenario stays interesting.
                if conf.replicas().count() <= 2 {
                    return Ok(());
                }
                let Some(&id) = self.rng.pick(&members) else { return Ok(()) };
                ConfChange::Remove { id }
            }
        };
        let Some(raw) = self.hosts[l].raw.as_mut() else { return Ok(()) };
        let res = raw.propose_conf_change(cc.clone());
        self.report.conf_changes += u64::from(res.is_ok());
        if res == Ok(crate::ConfChangeStatus::CatchingUp) {
            let target = match &cc {
                ConfChange::Add { id, .. } | ConfChange::Assign { id, .. } | ConfChange::Remove { id } => *id,
            };
            let term = raw.term();
            self.promoting = Some((self.hosts[l].id, term, target));
        }
        self.log(|| format!("CONF {cc:?}: {res:?}"));
        self.drive(l)
    }
}
