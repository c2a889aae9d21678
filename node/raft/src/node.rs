//! [`RawNode`]: the Raft state machine. Inputs go in through `tick`, `step`, `propose`,
//! `read_index`, ...; everything to persist, send and apply comes out of [`RawNode::ready`].
//!
//! The behaviour is split by concern over `election.rs`, `replication.rs`, `membership.rs`,
//! `read_index.rs`, `snapshot.rs` and `transfer.rs`, each adding methods to this type.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::config::{Config, Prng};
use crate::configuration::Configuration;
use crate::error::{Error, RestoreError, Result};
use crate::log::RaftLog;
use crate::membership::Promotion;
use crate::message::{Message, MessageBody};
use crate::progress::Progress;
use crate::read_index::PendingRead;
use crate::ready::{Event, IncomingSnapshotChunk, ReadState, Ready, SnapshotChunkRequest, SnapshotInstall, StateRole};
use crate::transfer::Transfer;
use crate::types::{Entry, EntryKind, HardState, LogIndex, NodeId, SnapshotMeta, Term};

/// A snapshot of a node's volatile state, for inspection and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Current term.
    pub term: Term,
    /// Vote cast in `term`.
    pub vote: Option<NodeId>,
    /// Current role.
    pub role: StateRole,
    /// Known leader.
    pub leader: Option<NodeId>,
    /// Commit index.
    pub committed: LogIndex,
    /// Applied index (as reported).
    pub applied: LogIndex,
    /// Last log index.
    pub last_index: LogIndex,
    /// Last log term.
    pub last_term: Term,
}

/// One Raft node, without I/O. See the crate docs for the call order.
#[derive(Debug)]
pub struct RawNode {
    pub(crate) cfg: Config,
    pub(crate) id: NodeId,
    pub(crate) heartbeat_ticks: u32,
    pub(crate) election_ticks: u32,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: StateRole,
    pub(crate) log: RaftLog,
    pub(crate) rng: Prng,
    pub(crate) election_elapsed: u32,
    pub(crate) randomized_timeout: u32,
    pub(crate) heartbeat_elapsed: u32,
    /// Ticks since this node started (a logical clock for check-quorum).
    pub(crate) ticks: u64,
    /// Leader: index of its first entry (the no-op) of its term.
    pub(crate) leader_first_index: LogIndex,
    /// Votes received in the current (pre-)election: `true` = granted.
    pub(crate) votes: BTreeMap<NodeId, bool>,
    /// Leader only: followers' progress.
    pub(crate) progress: BTreeMap<NodeId, Progress>,
    /// Configurations in the log, ascending by index; the last one is in force. Never empty.
    pub(crate) conf_history: Vec<(LogIndex, Configuration)>,
    /// The latest snapshot taken (leader: what to send) or installed.
    pub(crate) snapshot: Option<SnapshotMeta>,
    /// Follower: the snapshot being received and the bytes received so far.
    pub(crate) incoming: Option<(SnapshotMeta, u64)>,
    pub(crate) read_seq: u64,
    pub(crate) pending_reads: VecDeque<PendingRead>,
    pub(crate) reads_waiting_commit: Vec<Vec<u8>>,
    pub(crate) confirmed_reads: VecDeque<ReadState>,
    pub(crate) transfer: Option<Transfer>,
    pub(crate) promotion: Option<Promotion>,
    // Outputs accumulated for the next Ready.
    pub(crate) msgs: Vec<Message>,
    pub(crate) persisted_msgs: Vec<Message>,
    pub(crate) chunks_in: Vec<IncomingSnapshotChunk>,
    pub(crate) install: Option<SnapshotInstall>,
    pub(crate) chunk_requests: Vec<SnapshotChunkRequest>,
    pub(crate) events: Vec<Event>,
    pub(crate) last_hard_state: HardState,
    pub(crate) last_soft: (StateRole, Term, Option<NodeId>),
}

impl RawNode {
    /// A node with an empty log and no configuration: it waits to be contacted by a leader
    /// (a server joining an existing cluster).
    pub fn new(config: Config) -> Result<RawNode> {
        RawNode::restore(config, HardState::default(), None, Vec::new())
    }

    /// The entry that bootstraps a new cluster: index 1, term 1, carrying `conf`. Persist it
    /// on the first server(s) and pass it to [`RawNode::restore`].
    pub fn bootstrap_entry(conf: &Configuration) -> Entry {
        Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Configuration, data: conf.encode() }
    }

    /// Rebuilds a node from durable state after a restart: the hard state, the latest snapshot
    /// or compaction base (the meta returned by [`RawNode::snapshot_taken`]; the state machine
    /// holds at least everything up to its index), and the log entries after it. Entries at or
    /// before the base are ignored unless they are contiguous up to it (then they are kept as
    /// trailing entries, for lagging followers). Entries after the base are all the log the
    /// core needs: pass only those to bound memory. Committed entries after the base (as far as
    /// `hard_state.commit`, a hint, says) are handed out again in `committed_entries`; an
    /// application whose state is already past the base skips them by index.
    pub fn restore(
        config: Config,
        hard_state: HardState,
        snapshot: Option<SnapshotMeta>,
        entries: Vec<Entry>,
    ) -> Result<RawNode> {
        config.validate()?;
        let (base_index, base_term) = snapshot.as_ref().map_or((LogIndex::ZERO, Term::ZERO), |s| (s.index, s.term));
        // Entries kept behind the snapshot (trailing) stay in memory if they are contiguous up
        // to the snapshot's own entry: lagging followers then need no snapshot.
        let mut entries = entries.into_iter().peekable();
        let trailing_ok = {
            let first = entries.peek().map(|e| e.index);
            first.is_some_and(|f| f < base_index)
        };
        let mut log = RaftLog::new(base_index, base_term);
        if trailing_ok {
            let all: Vec<Entry> = entries.collect();
            let f = all[0].index;
            let at_base = (base_index.0 - f.0) as usize;
            let contiguous = all.iter().enumerate().all(|(k, e)| e.index.0 == f.0 + k as u64);
            if contiguous && all.get(at_base).is_some_and(|e| e.term == base_term) {
                log = RaftLog::new(f, all[0].term);
                for e in &all[1..=at_base] {
                    if e.term < log.last_term() {
                        return Err(Error::InvalidRestore(RestoreError::TermDecreases(e.index)));
                    }
                    log.push(e.clone());
                }
                log.committed = base_index;
                log.applying = base_index;
                log.applied = base_index;
            }
            entries = all.into_iter().peekable();
        }
        let mut conf_history = vec![match &snapshot {
            Some(s) => (s.configuration_index, s.configuration.clone()),
            None => (LogIndex::ZERO, Configuration::new()),
        }];
        for e in entries {
            if e.index <= base_index {
                continue;
            }
            let expected = log.last_index().next();
            if e.index != expected {
                return Err(Error::InvalidRestore(RestoreError::NotContiguous { expected, found: e.index }));
            }
            if e.term < log.last_term() {
                return Err(Error::InvalidRestore(RestoreError::TermDecreases(e.index)));
            }
            if e.kind == EntryKind::Configuration {
                let c = Configuration::decode(&e.data)
                    .map_err(|source| Error::BadConfigurationEntry { index: e.index, source })?;
                conf_history.push((e.index, c));
            }
            log.push(e);
        }
        log.persisted = log.last_index();
        log.unstable_from = log.last_index().next();
        log.committed = hard_state.commit.min(log.last_index()).max(base_index);
        let mut term = hard_state.term;
        let mut vote = hard_state.vote;
        if log.last_term() > term {
            term = log.last_term();
            vote = None;
        }
        let heartbeat_ticks = config.heartbeat_ticks();
        let election_ticks = config.election_ticks();
        let rng = Prng::new(config.rng_seed ^ config.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut node = RawNode {
            id: config.id,
            cfg: config,
            heartbeat_ticks,
            election_ticks,
            term,
            vote,
            leader: None,
            role: StateRole::Follower,
            log,
            rng,
            election_elapsed: 0,
            randomized_timeout: election_ticks,
            heartbeat_elapsed: 0,
            ticks: 0,
            leader_first_index: LogIndex::ZERO,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            conf_history,
            snapshot,
            incoming: None,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            reads_waiting_commit: Vec::new(),
            confirmed_reads: VecDeque::new(),
            transfer: None,
            promotion: None,
            msgs: Vec::new(),
            persisted_msgs: Vec::new(),
            chunks_in: Vec::new(),
            install: None,
            chunk_requests: Vec::new(),
            events: Vec::new(),
            last_hard_state: HardState { term, vote, commit: LogIndex::ZERO },
            last_soft: (StateRole::Follower, term, None),
        };
        node.last_hard_state.commit = node.log.committed;
        node.reset_election_timer();
        tracing::debug!(id = ?node.id, term = ?node.term, last = ?node.log.last_index(), "raft node restored");
        Ok(node)
    }

    // ----- inspection -------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role, as the application may act on it.
    ///
    /// A node that has won an election is *leader-elect* until the `Ready` that carried its
    /// new term has been reported durable (precisely: until [`RawNode::persisted`] covers its
    /// first entry of the term, the no-op appended in or after that `Ready`). Until then it
    /// reports [`StateRole::Candidate`], [`RawNode::is_leader`] is false, [`RawNode::leader`]
    /// is `None`, no [`Event::RoleChanged`] says `Leader`, proposals and reads are refused with
    /// [`Error::NotLeader`], and nothing of its term leaves the node. If it crashes in that
    /// window, it may restart in the previous term and vote for another server in the same
    /// term: nobody learnt of its leadership, so there never were two leaders of a term.
    pub fn role(&self) -> StateRole {
        self.public_soft().0
    }

    /// The known leader (`None` while this node is leader-elect, see [`RawNode::role`]).
    pub fn leader(&self) -> Option<NodeId> {
        self.public_soft().2
    }

    /// True if this node is the leader and its term is durable (see [`RawNode::role`]).
    pub fn is_leader(&self) -> bool {
        self.leader_durable()
    }

    /// The in-memory log (read-only view).
    pub fn log(&self) -> &RaftLog {
        &self.log
    }

    /// The configuration in force (the latest in the log, committed or not).
    pub fn configuration(&self) -> &Configuration {
        &self.conf_history[self.conf_history.len() - 1].1
    }

    /// The index of the entry that carried the configuration in force.
    pub fn configuration_index(&self) -> LogIndex {
        self.conf_history[self.conf_history.len() - 1].0
    }

    /// The latest snapshot taken or installed.
    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// Leader only: the progress of a follower.
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }

    /// The durable state as of the last `ready()` plus changes since.
    pub fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    /// A summary of the volatile state.
    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            term: self.term,
            vote: self.vote,
            role: self.role(),
            leader: self.leader(),
            committed: self.log.committed,
            applied: self.log.applied,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
        }
    }

    /// The election timeout, in ticks, for the current election round (randomized).
    pub fn randomized_election_ticks(&self) -> u32 {
        self.randomized_timeout
    }

    // ----- inputs -----------------------------------------------------------------------

    /// Advances logical time by one tick ([`Config::tick`]).
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == StateRole::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, m: Message) -> Result<()> {
        if m.to != self.id {
            return Err(Error::WrongRecipient { to: m.to, me: self.id });
        }
        if m.from == NodeId::ZERO || m.from == self.id {
            return Err(Error::InvalidSender);
        }
        if m.term > self.term {
            if let MessageBody::PreVote(r) | MessageBody::RequestVote(r) = &m.body {
                if !r.transfer && self.in_lease() {
                    tracing::trace!(id = ?self.id, from = ?m.from, "vote request ignored: leader lease");
                    return Ok(());
                }
            }
            match &m.body {
                MessageBody::PreVote(_) => {}
                MessageBody::PreVoteResponse(r) if r.granted => {}
                MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_) | MessageBody::InstallSnapshot(_) => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_) | MessageBody::InstallSnapshot(_) => {
                    // A stale leader: tell it the current term so that it steps down.
                    self.send(
                        m.from,
                        MessageBody::AppendEntriesResponse(crate::message::AppendEntriesResponse {
                            success: false,
                            index: LogIndex::ZERO,
                            hint: None,
                        }),
                    );
                }
                MessageBody::PreVote(_) => {
                    self.send(m.from, MessageBody::PreVoteResponse(crate::message::VoteResponse { granted: false }));
                }
                _ => {}
            }
            return Ok(());
        }
        let from = m.from;
        let term = m.term;
        match m.body {
            MessageBody::PreVote(r) => self.handle_pre_vote(from, term, r),
            MessageBody::RequestVote(r) => self.handle_request_vote(from, r),
            MessageBody::PreVoteResponse(r) => self.handle_vote_response(from, term, true, r.granted),
            MessageBody::RequestVoteResponse(r) => self.handle_vote_response(from, term, false, r.granted),
            MessageBody::AppendEntries(a) => self.handle_append(from, a),
            MessageBody::AppendEntriesResponse(r) => self.handle_append_response(from, r),
            MessageBody::Heartbeat(h) => self.handle_heartbeat(from, h),
            MessageBody::HeartbeatResponse(r) => self.handle_heartbeat_response(from, r),
            MessageBody::InstallSnapshot(s) => self.handle_install_snapshot(from, s),
            MessageBody::InstallSnapshotResponse(r) => self.handle_install_snapshot_response(from, r),
            MessageBody::TimeoutNow => self.handle_timeout_now(from),
        }
        Ok(())
    }

    /// Proposes an application command. Returns the index it will have if committed.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<LogIndex> {
        self.propose_entry(EntryKind::Command, data)
    }

    /// Appends a barrier (no-op) entry; once it is applied, everything before it is applied.
    pub fn barrier(&mut self) -> Result<LogIndex> {
        self.propose_entry(EntryKind::Barrier, Vec::new())
    }

    pub(crate) fn propose_entry(&mut self, kind: EntryKind, data: Vec<u8>) -> Result<LogIndex> {
        if !self.leader_durable() {
            return Err(Error::NotLeader { leader: self.leader() });
        }
        if self.transfer.is_some() {
            return Err(Error::TransferInProgress);
        }
        Ok(self.append_local(kind, data))
    }

    /// Leader: appends an entry of the current term and sends it out.
    pub(crate) fn append_local(&mut self, kind: EntryKind, data: Vec<u8>) -> LogIndex {
        debug_assert_eq!(self.role, StateRole::Leader);
        let index = self.log.last_index().next();
        self.log.push(Entry { term: self.term, index, kind, data });
        self.broadcast_append();
        index
    }

    /// Reports that everything up to `index` (whose entry has `term`) is durable. A report
    /// for an entry since overwritten is ignored.
    pub fn persisted(&mut self, index: LogIndex, term: Term) {
        if index > self.log.persisted && self.log.term(index) == Some(term) {
            self.log.persisted = index;
            if self.role == StateRole::Leader {
                self.maybe_commit();
            }
        }
    }

    /// Reports that the state machine has applied everything up to `index`.
    pub fn applied(&mut self, index: LogIndex) -> Result<()> {
        if index > self.log.applying {
            return Err(Error::AppliedTooFar { applied: index, handed_out: self.log.applying });
        }
        if index > self.log.applied {
            self.log.applied = index;
        }
        Ok(())
    }

    /// For an application that handles a whole `Ready` synchronously: reports it persisted
    /// and its committed entries applied.
    pub fn advance(&mut self, ready: &Ready) {
        if let Some((i, t)) = ready.persist_marker() {
            self.persisted(i, t);
        }
        if let Some(e) = ready.committed_entries.last() {
            if e.index > self.log.applied && e.index <= self.log.applying {
                self.log.applied = e.index;
            }
        }
    }

    // ----- outputs ----------------------------------------------------------------------

    /// True if [`RawNode::ready`] has something to do.
    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.persisted_msgs.is_empty()
            || !self.chunks_in.is_empty()
            || self.install.is_some()
            || self.log.unstable_from <= self.log.last_index()
            || (self.term, self.vote) != (self.last_hard_state.term, self.last_hard_state.vote)
            || self.log.committed.min(self.log.persisted) > self.log.applying
            || self.confirmed_reads.front().is_some_and(|r| r.index <= self.log.applied)
            || !self.chunk_requests.is_empty()
            || !self.events.is_empty()
            || self.public_soft() != self.last_soft
            || (self.cfg.eager_commit_updates && self.commit_updates_pending())
    }

    /// Leader: some follower in the replicate state, with nothing in flight, has not been sent
    /// the current commit index ([`Config::eager_commit_updates`](crate::Config)).
    pub fn commit_updates_pending(&self) -> bool {
        self.role == StateRole::Leader
            && self.progress.values().any(|p| {
                p.commit_sent < self.log.committed
                    && p.match_index.next() == p.next_index
                    && matches!(&p.state, crate::progress::ProgressState::Replicate { inflight } if inflight.is_empty())
            })
    }

    /// Takes everything the application must do now (see [`crate::ready`] for the order).
    pub fn ready(&mut self) -> Ready {
        if self.cfg.eager_commit_updates {
            // A no-op unless this node leads.
            self.send_commit_updates();
        }
        let soft = self.public_soft();
        if soft != self.last_soft {
            self.last_soft = soft;
            self.events.insert(0, Event::RoleChanged { role: soft.0, term: soft.1, leader: soft.2 });
        }
        // Only a new term or vote must be made durable; the commit index rides along as a
        // hint, never beyond what was durable before this Ready (see `crate::ready`).
        let hard_state = if (self.term, self.vote) != (self.last_hard_state.term, self.last_hard_state.vote) {
            let hs = HardState { term: self.term, vote: self.vote, commit: self.log.committed.min(self.log.persisted) };
            self.last_hard_state = hs;
            Some(hs)
        } else {
            None
        };
        let mut read_states = Vec::new();
        while self.confirmed_reads.front().is_some_and(|r| r.index <= self.log.applied) {
            if let Some(r) = self.confirmed_reads.pop_front() {
                read_states.push(r);
            }
        }
        Ready {
            messages: std::mem::take(&mut self.msgs),
            snapshot_chunks: std::mem::take(&mut self.chunks_in),
            snapshot: self.install.take(),
            entries: self.log.take_unstable(),
            hard_state,
            persisted_messages: std::mem::take(&mut self.persisted_msgs),
            committed_entries: self.log.take_committed(),
            read_states,
            snapshot_requests: std::mem::take(&mut self.chunk_requests),
            events: std::mem::take(&mut self.events),
        }
    }

    // ----- helpers ----------------------------------------------------------------------

    /// True if this node leads and its term is durable: its first entry of the term (appended
    /// in or after the `Ready` that carried the term) is reported persisted.
    pub(crate) fn leader_durable(&self) -> bool {
        self.role == StateRole::Leader && self.log.persisted >= self.leader_first_index
    }

    /// Role, term and leader as reported to the application: a leader-elect (term not yet
    /// durable) reports itself a candidate without a known leader.
    pub(crate) fn public_soft(&self) -> (StateRole, Term, Option<NodeId>) {
        if self.role == StateRole::Leader && !self.leader_durable() {
            (StateRole::Candidate, self.term, None)
        } else {
            (self.role, self.term, self.leader)
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let m = Message { from: self.id, to, term: self.term, body };
        if self.role == StateRole::Leader && self.log.persisted < self.leader_first_index {
            // Until the leader's first entry of its term is durable, its term may not be
            // either (a lone voter elects itself in the `Ready` that first carries the term):
            // nothing of the term may leave the node before that.
            self.persisted_msgs.push(m);
        } else {
            self.msgs.push(m);
        }
    }

    pub(crate) fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.persisted_msgs.push(Message { from: self.id, to, term: self.term, body });
    }

    pub(crate) fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_timeout = self.rng.range(self.election_ticks, self.election_ticks.saturating_mul(2));
    }

    /// True if this node heard from a leader within the election timeout (thesis §6.4:
    /// such a node disregards vote requests).
    pub(crate) fn in_lease(&self) -> bool {
        self.leader.is_some() && self.election_elapsed < self.election_ticks
    }

    /// The set of voters whose ids are in `acks` form a quorum of the configuration in force.
    pub(crate) fn is_quorum(&self, acks: &BTreeSet<NodeId>) -> bool {
        self.configuration().is_quorum(acks)
    }

    pub(crate) fn committed_in_term(&self) -> bool {
        self.log.term(self.log.committed) == Some(self.term)
    }

    /// The configuration in force at `index` (from the history).
    pub(crate) fn configuration_at(&self, index: LogIndex) -> (LogIndex, Configuration) {
        let mut out = &self.conf_history[0];
        for c in &self.conf_history {
            if c.0 <= index {
                out = c;
            }
        }
        out.clone()
    }
}

#[cfg(test)]
mod tests {
    use crate::test_harness::Cluster;
    use crate::{Error, Event, LogIndex, NodeId, StateRole, Term};

    #[test]
    fn ready_is_drained_and_has_ready_tracks_work() {
        let mut c = Cluster::new(1, 90);
        c.elect(1);
        assert!(!c.node(1).has_ready());
        assert!(c.node(1).ready().is_empty());
        let i = c.node(1).propose(b"x".to_vec()).unwrap();
        assert!(c.node(1).has_ready());
        let rd = c.node(1).ready();
        assert_eq!(rd.entries.len(), 1);
        assert!(rd.committed_entries.is_empty(), "not committed before it is persisted");
        assert_eq!(rd.persist_marker(), Some((i, c.node(1).term())));
        c.node(1).advance(&rd);
        let rd = c.node(1).ready();
        assert_eq!(rd.committed_entries.last().map(|e| e.index), Some(i));
        assert!(rd.entries.is_empty());
        assert!(rd.hard_state.is_none(), "a commit alone needs no hard-state write");
    }

    #[test]
    fn commits_after_the_election_need_no_hard_state_write() {
        let mut c = Cluster::new(3, 93);
        c.elect(1);
        c.run(1);
        let term = c.node(1).term();
        let before = c.node(1).log().committed();
        for k in 0..20u8 {
            c.node(1).propose(vec![k]).unwrap();
            for _ in 0..3 {
                for id in 1..=3 {
                    let rd = c.node(id).ready();
                    assert!(
                        rd.hard_state.is_none(),
                        "node {id} asked for a hard-state write at commit {:?}",
                        c.node(id).log().committed()
                    );
                    let out: Vec<_> = rd.messages.iter().chain(rd.persisted_messages.iter()).cloned().collect();
                    c.node(id).advance(&rd);
                    for m in out {
                        let to = m.to;
                        c.node(to.0).step(m).unwrap();
                    }
                }
            }
        }
        assert!(c.node(1).log().committed() >= LogIndex(before.0 + 20), "the commits happened");
        for id in 2..=3 {
            assert!(c.node(id).log().committed() > before);
        }
        assert_eq!(c.node(1).term(), term);
        // A new term or vote does ask for one, carrying a commit hint no later than what was
        // durable before it.
        c.node(2).campaign(false, false);
        let rd = c.node(2).ready();
        let hs = rd.hard_state.expect("new term and vote must be persisted");
        assert_eq!((hs.term, hs.vote), (c.node(2).term(), Some(NodeId(2))));
        assert!(hs.commit <= c.node(2).log().persisted());
    }

    #[test]
    fn applied_cannot_pass_what_was_handed_out_and_stale_persist_is_ignored() {
        let mut c = Cluster::new(1, 91);
        c.elect(1);
        let handed = c.node(1).log().applied();
        assert_eq!(
            c.node(1).applied(LogIndex(99)),
            Err(Error::AppliedTooFar { applied: LogIndex(99), handed_out: handed })
        );
        let i = c.node(1).propose(b"x".to_vec()).unwrap();
        let _ = c.node(1).ready();
        c.node(1).persisted(i, Term(99));
        assert!(c.node(1).log().persisted() < i, "a persist report for another term must be ignored");
        let t = c.node(1).term();
        c.node(1).persisted(i, t);
        assert_eq!(c.node(1).log().persisted(), i);
    }

    #[test]
    fn role_changes_are_reported_as_events() {
        let mut c = Cluster::new(3, 92);
        c.elect(2);
        let ev = &c.events[&NodeId(2)];
        assert!(ev
            .iter()
            .any(|e| matches!(e, Event::RoleChanged { role: StateRole::Leader, leader: Some(NodeId(2)), .. })));
        let st = c.node(1).status();
        assert_eq!(st.leader, Some(NodeId(2)));
        assert_eq!(st.role, StateRole::Follower);
        assert_eq!(c.node(3).id(), NodeId(3));
    }
}

#[cfg(test)]
mod restore_tests {
    use crate::test_harness::config;
    use crate::{Configuration, Entry, EntryKind, HardState, LogIndex, NodeId, RawNode, SnapshotMeta, Term};

    fn e(i: u64, t: u64) -> Entry {
        Entry { term: Term(t), index: LogIndex(i), kind: EntryKind::Command, data: vec![i as u8] }
    }

    fn meta(i: u64, t: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(i),
            term: Term(t),
            configuration: Configuration::with_voters([NodeId(1)]),
            configuration_index: LogIndex(1),
        }
    }

    #[test]
    fn restore_keeps_trailing_entries_behind_the_snapshot() {
        let hs = HardState { term: Term(2), vote: None, commit: LogIndex(7) };
        let log: Vec<Entry> = (3..=8).map(|i| e(i, if i < 6 { 1 } else { 2 })).collect();
        let mut n = RawNode::restore(config(1, 0), hs, Some(meta(5, 1)), log).unwrap();
        assert_eq!(n.log().compacted_index(), LogIndex(3));
        assert_eq!(n.log().first_index(), LogIndex(4));
        assert_eq!(n.log().last_index(), LogIndex(8));
        assert_eq!(n.log().applied(), LogIndex(5));
        let rd = n.ready();
        assert!(rd.entries.is_empty(), "restored entries are already durable");
        assert_eq!(rd.committed_entries.iter().map(|e| e.index.0).collect::<Vec<_>>(), vec![6, 7]);
        assert_eq!(n.configuration(), &Configuration::with_voters([NodeId(1)]));
    }

    #[test]
    fn restore_drops_trailing_entries_that_disagree_with_the_snapshot() {
        let hs = HardState { term: Term(2), vote: None, commit: LogIndex(5) };
        let log: Vec<Entry> = (3..=6).map(|i| e(i, if i < 6 { 1 } else { 2 })).collect();
        let n = RawNode::restore(config(1, 0), hs, Some(meta(5, 2)), log).unwrap();
        assert_eq!(n.log().compacted_index(), LogIndex(5));
        assert_eq!(n.log().term(LogIndex(5)), Some(Term(2)));
        assert_eq!(n.log().last_index(), LogIndex(6));
    }
}
