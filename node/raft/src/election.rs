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
        let granted = term > self.term && self.log.is_up_to_date(r.last_log_index, r.last_log_term);
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
        let granted = can_vote && self.log.is_up_to_date(r.last_log_index, r.last_log_term);
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
