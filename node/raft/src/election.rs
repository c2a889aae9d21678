//! Leader election (§5.2) with pre-vote (thesis §9.6), the election restriction (§5.4.1),
//! and check-quorum with leader lease (thesis §6.4).

use std::collections::BTreeSet;

use crate::message::{MessageBody, VoteRequest, VoteResponse};
use crate::node::RawNode;
use crate::progress::Progress;
use crate::ready::{Event, StateRole};
use crate::types::{EntryKind, NodeId, Term};

impl RawNode {
    pub(crate) fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.randomized_timeout && self.can_campaign() {
            tracing::debug!(id = ?self.id, term = ?self.term, "election timeout");
            self.campaign(true, false);
        }
    }

    pub(crate) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        if !self.check_quorum() {
            tracing::info!(id = ?self.id, term = ?self.term, "leader lost contact with a quorum: stepping down");
            self.become_follower(self.term, None);
            return;
        }
        self.tick_transfer();
        self.tick_promotion();
        if self.heartbeat_elapsed >= self.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.retry_snapshots();
        }
    }

    /// Check-quorum: true if a quorum of voters was heard from within the last election
    /// timeout (the leader counts itself).
    fn check_quorum(&self) -> bool {
        let mut active = BTreeSet::new();
        active.insert(self.id);
        for (id, pr) in &self.progress {
            if self.ticks.saturating_sub(pr.last_active) < u64::from(self.election_ticks) {
                active.insert(*id);
            }
        }
        self.is_quorum(&active)
    }

    /// True if this node may start an election: it is a voter in the configuration in force,
    /// or that configuration is uncommitted and it was a voter in the one before. (A server
    /// demoted or removed by an uncommitted change may be the only one holding that change;
    /// it must be able to win an election to commit it. Votes are always counted in the
    /// configuration in force, where its own vote does not count.)
    pub(crate) fn can_campaign(&self) -> bool {
        if self.configuration().is_voter(self.id) {
            return true;
        }
        let n = self.conf_history.len();
        self.configuration_index() > self.log.committed && n >= 2 && self.conf_history[n - 2].1.is_voter(self.id)
    }

    /// Starts a pre-vote round (`pre`) or an election. `transfer` elections skip the lease.
    pub(crate) fn campaign(&mut self, pre: bool, transfer: bool) {
        let term = if pre {
            self.become_pre_candidate();
            self.term.next()
        } else {
            self.become_candidate();
            self.term
        };
        self.votes.insert(self.id, true);
        if self.vote_outcome() == Some(true) {
            if pre {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let req = VoteRequest { last_log_index: self.log.last_index(), last_log_term: self.log.last_term(), transfer };
        let voters: Vec<NodeId> = self.configuration().voters().filter(|v| *v != self.id).collect();
        for v in voters {
            let m = crate::message::Message {
                from: self.id,
                to: v,
                term,
                body: if pre { MessageBody::PreVote(req) } else { MessageBody::RequestVote(req) },
            };
            if pre {
                self.msgs.push(m);
            } else {
                // The candidate's own vote must be durable before it asks for others.
                self.persisted_msgs.push(m);
            }
        }
    }

    /// True if this server has never held a log entry or snapshot: it was never a member of
    /// any configuration it knows of, so it casts no vote (and pre-vote). A blank server asked
    /// for a vote is either not a voter or one whose disk was lost and that kept its id; in
    /// the latter case a candidate with a stale configuration could win with its vote
    /// (finding F3). Defence in depth: such a server must rejoin under a new id.
    fn is_blank(&self) -> bool {
        self.log.last_index() == crate::types::LogIndex::ZERO
    }

    /// `Some(true)` if granted votes form a quorum, `Some(false)` if rejections do.
    fn vote_outcome(&self) -> Option<bool> {
        let granted: BTreeSet<NodeId> = self.votes.iter().filter(|(_, g)| **g).map(|(id, _)| *id).collect();
        let rejected: BTreeSet<NodeId> = self.votes.iter().filter(|(_, g)| !**g).map(|(id, _)| *id).collect();
        if self.is_quorum(&granted) {
            Some(true)
        } else if self.is_quorum(&rejected) {
            Some(false)
        } else {
            None
        }
    }

    pub(crate) fn handle_pre_vote(&mut self, from: NodeId, term: Term, r: VoteRequest) {
        // `term` >= self.term here; a pre-vote is only granted for a later term (the
        // candidate's would-be term) and a log at least as up to date (§5.4.1).
        let granted = term > self.term && !self.is_blank() && self.log.is_up_to_date(r.last_log_index, r.last_log_term);
        let reply_term = if granted { term } else { self.term };
        tracing::trace!(id = ?self.id, ?from, ?term, granted, "pre-vote");
        self.msgs.push(crate::message::Message {
            from: self.id,
            to: from,
            term: reply_term,
            body: MessageBody::PreVoteResponse(VoteResponse { granted }),
        });
    }

    pub(crate) fn handle_request_vote(&mut self, from: NodeId, r: VoteRequest) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && !self.is_blank() && self.log.is_up_to_date(r.last_log_index, r.last_log_term);
        tracing::trace!(id = ?self.id, ?from, term = ?self.term, granted, "request vote");
        if granted {
            self.vote = Some(from);
            self.reset_election_timer();
            self.send_after_persist(from, MessageBody::RequestVoteResponse(VoteResponse { granted }));
        } else {
            self.send(from, MessageBody::RequestVoteResponse(VoteResponse { granted }));
        }
    }

    pub(crate) fn handle_vote_response(&mut self, from: NodeId, term: Term, pre: bool, granted: bool) {
        let expected_role = if pre { StateRole::PreCandidate } else { StateRole::Candidate };
        if self.role != expected_role {
            return;
        }
        if pre && granted && term != self.term.next() {
            return;
        }
        self.votes.entry(from).or_insert(granted);
        match self.vote_outcome() {
            Some(true) if pre => self.campaign(false, false),
            Some(true) => self.become_leader(),
            Some(false) => self.become_follower(self.term, None),
            None => {}
        }
    }

    pub(crate) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role == StateRole::Leader || !self.can_campaign() {
            return;
        }
        tracing::info!(id = ?self.id, ?from, "timeout-now: starting election for leadership transfer");
        self.campaign(false, true);
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        let was_leader = self.role == StateRole::Leader;
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = StateRole::Follower;
        self.leader = leader;
        self.votes.clear();
        self.reset_election_timer();
        if was_leader {
            self.on_leadership_lost();
        }
    }

    fn become_pre_candidate(&mut self) {
        debug_assert_ne!(self.role, StateRole::Leader);
        self.role = StateRole::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
    }

    fn become_candidate(&mut self) {
        debug_assert_ne!(self.role, StateRole::Leader);
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.role = StateRole::Candidate;
        self.leader = None;
        self.votes.clear();
        self.reset_election_timer();
        tracing::debug!(id = ?self.id, term = ?self.term, "became candidate");
    }

    pub(crate) fn become_leader(&mut self) {
        debug_assert_eq!(self.role, StateRole::Candidate);
        self.role = StateRole::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.progress.clear();
        let last = self.log.last_index();
        let peers: Vec<NodeId> = self.configuration().replicas().filter(|r| *r != self.id).collect();
        for p in peers {
            self.progress.insert(p, Progress::new(last, self.ticks));
        }
        tracing::info!(id = ?self.id, term = ?self.term, "became leader");
        // A no-op of the new term, so that earlier entries get committed (§5.4.2, §8).
        self.leader_first_index = self.log.last_index().next();
        self.append_local(EntryKind::Barrier, Vec::new());
    }

    /// Leader -> follower: abandon leader-only work.
    fn on_leadership_lost(&mut self) {
        self.progress.clear();
        for r in std::mem::take(&mut self.pending_reads) {
            self.events.push(Event::ReadIndexFailed { ctx: r.ctx });
        }
        for ctx in std::mem::take(&mut self.reads_waiting_commit) {
            self.events.push(Event::ReadIndexFailed { ctx });
        }
        if let Some(p) = self.promotion.take() {
            self.events.push(Event::ConfChangeAborted { node: p.server.id });
        }
        self.transfer = None;
    }
}

#[cfg(test)]
mod tests {
    use crate::test_harness::{config, Cluster};
    use crate::{
        Configuration, HardState, LogIndex, Message, MessageBody, NodeId, RawNode, StateRole, Term, VoteRequest,
        VoteResponse,
    };

    fn node3() -> RawNode {
        let conf = Configuration::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
        RawNode::restore(config(1, 5), HardState::default(), None, vec![RawNode::bootstrap_entry(&conf)]).unwrap()
    }

    fn m(from: u64, term: u64, body: MessageBody) -> Message {
        Message { from: NodeId(from), to: NodeId(1), term: Term(term), body }
    }

    #[test]
    fn prevote_keeps_term_and_needs_a_quorum_of_grants() {
        let mut n = node3();
        let t = n.term();
        n.campaign(true, false);
        assert_eq!(n.role(), StateRole::PreCandidate);
        assert_eq!(n.term(), t);
        let rd = n.ready();
        assert!(rd.hard_state.is_none(), "pre-vote must not change durable state");
        assert_eq!(
            rd.messages.iter().filter(|m| matches!(m.body, MessageBody::PreVote(_)) && m.term == t.next()).count(),
            2
        );
        // A grant for a different term is ignored; a proper one makes it a candidate.
        n.step(m(2, t.0 + 2, MessageBody::PreVoteResponse(VoteResponse { granted: true }))).unwrap();
        assert_eq!(n.role(), StateRole::PreCandidate);
        n.step(m(2, t.0 + 1, MessageBody::PreVoteResponse(VoteResponse { granted: true }))).unwrap();
        assert_eq!(n.role(), StateRole::Candidate);
        assert_eq!(n.term(), t.next());
        let rd = n.ready();
        assert_eq!(rd.hard_state.unwrap().vote, Some(NodeId(1)));
        assert_eq!(rd.persisted_messages.iter().filter(|m| matches!(m.body, MessageBody::RequestVote(_))).count(), 2);
    }

    #[test]
    fn quorum_of_rejections_ends_the_campaign() {
        let mut n = node3();
        n.campaign(false, false);
        let t = n.term();
        n.step(m(2, t.0, MessageBody::RequestVoteResponse(VoteResponse { granted: false }))).unwrap();
        assert_eq!(n.role(), StateRole::Candidate);
        n.step(m(3, t.0, MessageBody::RequestVoteResponse(VoteResponse { granted: false }))).unwrap();
        assert_eq!(n.role(), StateRole::Follower);
        assert_eq!(n.term(), t);
    }

    #[test]
    fn prevote_from_a_lower_term_is_rejected_with_our_term() {
        let mut n = node3();
        let req = VoteRequest { last_log_index: LogIndex(9), last_log_term: Term(9), transfer: false };
        n.step(m(2, 5, MessageBody::RequestVote(req))).unwrap();
        let _ = n.ready();
        n.step(m(3, 3, MessageBody::PreVote(req))).unwrap();
        let rd = n.ready();
        assert!(
            matches!(&rd.messages[..], [Message { term: Term(5), body: MessageBody::PreVoteResponse(r), .. }] if !r.granted)
        );
    }

    #[test]
    fn stale_leader_learns_the_newer_term_from_a_follower() {
        let mut c = Cluster::new(3, 80);
        c.elect(1);
        c.run(1);
        c.isolate(1);
        c.elect(2);
        c.heal();
        c.run(3);
        assert_eq!(c.leaders(), vec![NodeId(2)]);
        assert_eq!(c.node(1).term(), c.node(2).term());
    }

    #[test]
    fn restore_takes_term_from_log_when_hard_state_is_behind() {
        let conf = Configuration::with_voters([NodeId(1)]);
        let n = RawNode::restore(
            config(1, 0),
            HardState { term: Term(0), vote: Some(NodeId(1)), commit: LogIndex(7) },
            None,
            vec![RawNode::bootstrap_entry(&conf)],
        )
        .unwrap();
        assert_eq!(n.term(), Term(1));
        assert_eq!(n.hard_state().vote, None);
        assert_eq!(n.log().committed(), LogIndex(1), "commit clamped to the log");
    }

    #[test]
    fn prevote_needs_an_up_to_date_log_even_for_a_later_term() {
        let mut n = node3();
        let stale = VoteRequest { last_log_index: LogIndex(0), last_log_term: Term(0), transfer: false };
        n.step(m(2, 5, MessageBody::PreVote(stale))).unwrap();
        let ok = VoteRequest { last_log_index: LogIndex(1), last_log_term: Term(1), transfer: false };
        n.step(m(3, 5, MessageBody::PreVote(ok))).unwrap();
        let rd = n.ready();
        let grants: Vec<(NodeId, bool)> = rd
            .messages
            .iter()
            .filter_map(|x| match x.body {
                MessageBody::PreVoteResponse(r) => Some((x.to, r.granted)),
                _ => None,
            })
            .collect();
        assert_eq!(grants, vec![(NodeId(2), false), (NodeId(3), true)]);
        assert_eq!(n.term(), Term(1), "pre-votes change no term");
    }

    #[test]
    fn rejected_prevote_from_a_later_term_moves_the_precandidate_to_it() {
        let mut n = node3();
        n.campaign(true, false);
        n.step(m(2, 7, MessageBody::PreVoteResponse(VoteResponse { granted: false }))).unwrap();
        assert_eq!(n.term(), Term(7));
        assert_eq!(n.role(), StateRole::Follower);
    }

    #[test]
    fn check_quorum_steps_down_exactly_one_election_timeout_after_last_contact() {
        let mut c = Cluster::new(3, 83);
        c.elect(1);
        c.run(1);
        c.isolate(1);
        // The latest answer from a follower came at leader tick `t0`.
        let et = u64::from(c.nodes[&NodeId(1)].election_ticks);
        let t0 = [2, 3].iter().map(|i| c.nodes[&NodeId(1)].progress(NodeId(*i)).unwrap().last_active).max().unwrap();
        while c.nodes[&NodeId(1)].ticks < t0 + et - 1 {
            c.node(1).tick();
        }
        assert!(c.node(1).is_leader(), "stepped down early");
        c.node(1).tick();
        assert_eq!(c.node(1).role(), StateRole::Follower);
    }

    #[test]
    fn timeout_now_is_ignored_by_non_voters_and_leaders() {
        let mut c = Cluster::new(3, 84);
        c.elect(1);
        c.run(1);
        c.node(1).propose_conf_change(crate::ConfChange::Assign { id: NodeId(3), role: crate::Role::Standby }).unwrap();
        c.run(2);
        let t = c.node(1).term();
        c.node(3).step(Message { from: NodeId(1), to: NodeId(3), term: t, body: MessageBody::TimeoutNow }).unwrap();
        assert_eq!(c.node(3).role(), StateRole::Follower);
        assert_eq!(c.node(3).term(), t);
        c.node(1).step(Message { from: NodeId(2), to: NodeId(1), term: t, body: MessageBody::TimeoutNow }).unwrap();
        assert!(c.node(1).is_leader());
        assert_eq!(c.node(1).term(), t);
    }

    #[test]
    fn leader_heartbeats_every_heartbeat_interval() {
        let mut c = Cluster::new(3, 82);
        c.elect(1);
        c.run(1);
        let hb = c.nodes[&NodeId(1)].heartbeat_ticks;
        assert!(hb >= 2);
        let _ = c.node(1).ready();
        let mut beats = 0;
        for _ in 0..hb * 5 {
            c.node(1).tick();
            let rd = c.node(1).ready();
            beats +=
                rd.messages.iter().filter(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::Heartbeat(_))).count();
        }
        assert_eq!(beats, 5);
    }

    #[test]
    fn single_voter_elects_itself_after_timeout() {
        let mut c = Cluster::new(1, 81);
        let l = c.wait_leader(100);
        assert_eq!(l, NodeId(1));
        c.node(1).read_index(b"r".to_vec()).unwrap();
        c.process(NodeId(1));
        assert_eq!(c.reads[&NodeId(1)].len(), 1);
    }
}
