//! Log replication (§5.3): pipelined AppendEntries with flow control, fast conflict back-off,
//! heartbeats, and commitment by a majority of the current term only (§5.4.2).

use crate::message::{AppendEntries, AppendEntriesResponse, Heartbeat, HeartbeatResponse, MessageBody, RejectHint};
use crate::node::RawNode;
use crate::progress::ProgressState;
use crate::ready::StateRole;
use crate::types::{EntryKind, LogIndex, NodeId};

impl RawNode {
    /// Leader: sends whatever each follower can take now.
    pub(crate) fn broadcast_append(&mut self) {
        let ids: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in ids {
            self.send_appends(id);
        }
    }

    /// Leader: sends appends to `to` until its pipeline is full or it is up to date.
    pub(crate) fn send_appends(&mut self, to: NodeId) {
        // Bounded: each iteration either sends and advances `next_index` or stops.
        for _ in 0..=self.cfg.max_inflight_appends {
            if !self.send_append(to) {
                break;
            }
            let Some(pr) = self.progress.get(&to) else { break };
            if !matches!(pr.state, ProgressState::Replicate { .. }) || pr.next_index > self.log.last_index() {
                break;
            }
        }
    }

    /// Leader: sends one AppendEntries (or starts a snapshot) to `to`. False if nothing was sent.
    fn send_append(&mut self, to: NodeId) -> bool {
        let max_inflight = self.cfg.max_inflight_appends;
        let Some(pr) = self.progress.get(&to) else { return false };
        if pr.is_paused(max_inflight) {
            return false;
        }
        let next = pr.next_index;
        let replicate = matches!(pr.state, ProgressState::Replicate { .. });
        let prev = next.prev();
        let Some(prev_term) = self.log.term(prev) else {
            self.start_snapshot(to);
            return false;
        };
        let entries = self.log.slice(next, self.log.last_index(), self.cfg.max_append_bytes);
        if replicate && entries.is_empty() {
            return false;
        }
        let last = entries.last().map_or(prev, |e| e.index);
        let commit = self.log.committed;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent_append(last);
            pr.commit_sent = commit;
        }
        self.send(
            to,
            MessageBody::AppendEntries(AppendEntries {
                prev_log_index: prev,
                prev_log_term: prev_term,
                entries,
                leader_commit: commit,
            }),
        );
        true
    }

    /// Leader: tells followers in the replicate state about a commit index they have not been
    /// sent yet (an empty AppendEntries after the last entry sent), so that they apply without
    /// waiting for the next heartbeat. Called at each `Ready` with
    /// [`Config::eager_commit_updates`](crate::Config), else when the application asks; a
    /// no-op on a follower. The messages come out in the next `Ready`.
    pub fn send_commit_updates(&mut self) {
        if self.role != StateRole::Leader {
            return;
        }
        let commit = self.log.committed;
        let mut out = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            // Only to a follower with nothing in flight (an append in flight carries the commit
            // index when a later one is sent, or its answer brings us back here), so that this
            // empty append can never overtake entries and be rejected.
            let idle = matches!(&pr.state, ProgressState::Replicate { inflight } if inflight.is_empty());
            if pr.commit_sent >= commit || !idle || pr.match_index.next() != pr.next_index {
                continue;
            }
            pr.commit_sent = commit;
            let prev = pr.match_index;
            let Some(prev_term) = self.log.term(prev) else { continue };
            out.push((*id, prev, prev_term));
        }
        for (id, prev, prev_term) in out {
            self.send(
                id,
                MessageBody::AppendEntries(AppendEntries {
                    prev_log_index: prev,
                    prev_log_term: prev_term,
                    entries: Vec::new(),
                    leader_commit: commit,
                }),
            );
        }
    }

    /// Leader: heartbeats to every follower, carrying the latest ReadIndex round.
    pub(crate) fn broadcast_heartbeat(&mut self) {
        let seq = self.read_seq;
        let commit = self.log.committed;
        let beats: Vec<(NodeId, LogIndex)> =
            self.progress.iter().map(|(id, pr)| (*id, pr.match_index.min(commit))).collect();
        for (id, c) in beats {
            self.send(id, MessageBody::Heartbeat(Heartbeat { commit: c, read_seq: seq, leader_commit: commit }));
        }
    }

    /// A message from the leader of the current term arrived: follow it and reset the election
    /// timer. Returns `false` (and ignores the message) if this node is itself leader of that
    /// term, which election safety forbids.
    pub(crate) fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == StateRole::Leader {
            tracing::error!(id = ?self.id, ?from, term = ?self.term, "two leaders in one term: message ignored");
            debug_assert!(false, "two leaders in one term");
            return false;
        }
        if self.role != StateRole::Follower {
            self.become_follower(self.term, Some(from));
        }
        self.leader = Some(from);
        self.election_elapsed = 0;
        true
    }

    /// Follower side of AppendEntries.
    pub(crate) fn handle_append(&mut self, from: NodeId, a: AppendEntries) {
        if !self.accept_leader(from) {
            return;
        }

        let mut prev = a.prev_log_index;
        let mut prev_term = a.prev_log_term;
        let mut entries = &a.entries[..];
        let committed = self.log.committed;
        if prev < committed {
            // Everything up to our commit index already matches the leader's log.
            let skip = (committed.0 - prev.0) as usize;
            if skip >= entries.len() {
                self.send_after_persist(from, ack(committed));
                return;
            }
            entries = &entries[skip..];
            prev = committed;
            prev_term = match self.log.term(committed) {
                Some(t) => t,
                None => return,
            };
        }
        if !self.log.matches(prev, prev_term) {
            let hint = if prev > self.log.last_index() {
                RejectHint { conflict_term: None, conflict_index: self.log.last_index().next() }
            } else {
                RejectHint {
                    conflict_term: self.log.term(prev),
                    conflict_index: self.log.first_index_of_term_run(prev),
                }
            };
            tracing::trace!(id = ?self.id, ?prev, ?hint, "append rejected");
            self.send(
                from,
                MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                    success: false,
                    index: a.prev_log_index,
                    hint: Some(hint),
                }),
            );
            return;
        }
        if let Some(at) = self.log.merge(entries) {
            self.truncate_conf_history(at);
        }
        let last_conf = self.configuration_index();
        let mut conf_changed = false;
        for e in entries {
            if e.kind == EntryKind::Configuration && e.index > last_conf {
                match crate::Configuration::decode(&e.data) {
                    Ok(c) => {
                        self.conf_history.push((e.index, c));
                        conf_changed = true;
                    }
                    Err(err) => tracing::error!(index = ?e.index, %err, "undecodable configuration entry ignored"),
                }
            }
        }
        if conf_changed {
            tracing::debug!(id = ?self.id, conf = ?self.configuration(), "configuration changed");
        }
        let last_new = LogIndex(prev.0 + entries.len() as u64);
        self.commit_to(a.leader_commit.min(last_new));
        self.send_after_persist(from, ack(last_new));
    }

    /// Drops configurations carried by entries at or after `from` (they were truncated).
    pub(crate) fn truncate_conf_history(&mut self, from: LogIndex) {
        while self.conf_history.len() > 1 && self.conf_history.last().is_some_and(|c| c.0 >= from) {
            self.conf_history.pop();
        }
    }

    pub(crate) fn commit_to(&mut self, index: LogIndex) {
        if index > self.log.committed {
            debug_assert!(index <= self.log.last_index());
            self.log.committed = index;
        }
    }

    /// Leader side of an AppendEntries answer.
    pub(crate) fn handle_append_response(&mut self, from: NodeId, r: AppendEntriesResponse) {
        if self.role != StateRole::Leader {
            return;
        }
        let now = self.ticks;
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_active = now;
        if r.success {
            if r.index > self.log.last_index() {
                return; // cannot happen with an honest follower
            }
            if pr.on_ack(r.index) {
                pr.behind_since = (pr.match_index < self.log.last_index()).then_some(self.ticks);
                self.maybe_commit();
            }
            self.on_follower_progress(from);
            self.send_appends(from);
        } else {
            let new_next = match r.hint {
                Some(RejectHint { conflict_term: Some(t), conflict_index }) => {
                    let i = self.log.last_index_of_term_at_most(t, r.index);
                    if self.log.term(i) == Some(t) {
                        i.next()
                    } else {
                        conflict_index
                    }
                }
                Some(RejectHint { conflict_term: None, conflict_index }) => conflict_index,
                None => r.index,
            };
            if pr.on_reject(r.index, new_next) {
                tracing::trace!(id = ?self.id, ?from, next = ?new_next, "probing after rejection");
                self.send_appends(from);
            }
        }
    }

    /// Follower side of a heartbeat.
    pub(crate) fn handle_heartbeat(&mut self, from: NodeId, h: Heartbeat) {
        if !self.accept_leader(from) {
            return;
        }
        self.commit_to(h.commit.min(self.log.last_index()));
        self.send(from, MessageBody::HeartbeatResponse(HeartbeatResponse { read_seq: h.read_seq }));
    }

    /// Leader side of a heartbeat answer.
    pub(crate) fn handle_heartbeat_response(&mut self, from: NodeId, r: HeartbeatResponse) {
        if self.role != StateRole::Leader {
            return;
        }
        let now = self.ticks;
        let last = self.log.last_index();
        let stall_ticks = u64::from((self.election_ticks / 2).max(2 * self.heartbeat_ticks));
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_active = now;
        pr.resume();
        if pr.match_index < last {
            match pr.behind_since {
                None => pr.behind_since = Some(now),
                Some(since) if now.saturating_sub(since) >= stall_ticks => {
                    // The follower answers heartbeats but its match index has not moved for
                    // half an election timeout: an append or its answer was lost. Probe.
                    if matches!(pr.state, ProgressState::Replicate { .. }) {
                        tracing::debug!(leader = ?self.id, follower = ?from, "replication stalled: probing");
                        pr.become_probe();
                    }
                    pr.behind_since = Some(now);
                }
                Some(_) => {}
            }
            self.send_appends(from);
        } else {
            pr.behind_since = None;
        }
        self.on_read_ack(from, r.read_seq);
    }

    /// Leader: advances the commit index to the highest index durable on a majority of
    /// voters, if that entry is of the current term (§5.4.2).
    pub(crate) fn maybe_commit(&mut self) {
        debug_assert_eq!(self.role, StateRole::Leader);
        let conf = self.configuration();
        let mut matches: Vec<LogIndex> = conf
            .voters()
            .map(|v| {
                if v == self.id {
                    self.log.persisted
                } else {
                    self.progress.get(&v).map_or(LogIndex::ZERO, |p| p.match_index)
                }
            })
            .collect();
        if matches.is_empty() {
            return;
        }
        matches.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_index = matches[matches.len() / 2];
        if quorum_index <= self.log.committed || self.log.term(quorum_index) != Some(self.term) {
            return;
        }
        let first_in_term = !self.committed_in_term();
        self.commit_to(quorum_index);
        tracing::trace!(id = ?self.id, committed = ?quorum_index, "commit advanced");
        if first_in_term {
            self.on_first_commit_in_term();
        }
        self.after_commit_membership();
    }
}

fn ack(index: LogIndex) -> MessageBody {
    MessageBody::AppendEntriesResponse(AppendEntriesResponse { success: true, index, hint: None })
}

#[cfg(test)]
mod tests {
    use crate::test_harness::Cluster;
    use crate::{AppendEntriesResponse, LogIndex, Message, MessageBody, NodeId, ProgressState, RejectHint, Term};

    fn reject(from: u64, term: Term, index: u64, hint: RejectHint) -> Message {
        Message {
            from: NodeId(from),
            to: NodeId(1),
            term,
            body: MessageBody::AppendEntriesResponse(AppendEntriesResponse {
                success: false,
                index: LogIndex(index),
                hint: Some(hint),
            }),
        }
    }

    /// A leader whose log is 1@1 (bootstrap), then entries of its term t up to `n`.
    fn leader_with(n: u64) -> (Cluster, Term) {
        let mut c = Cluster::new(3, 40);
        c.elect(1);
        c.run(1);
        for i in 0..n {
            c.propose(1, &[i as u8]);
        }
        c.deliver();
        let t = c.node(1).term();
        (c, t)
    }

    #[test]
    fn fast_backoff_uses_conflict_index_when_log_is_short() {
        let (mut c, t) = leader_with(8);
        let last = c.node(1).log().last_index();
        c.node(1).progress.get_mut(&NodeId(2)).unwrap().become_probe();
        let pr = c.node(1).progress(NodeId(2)).unwrap().clone();
        assert_eq!(pr.next_index, last.next());
        c.node(1).progress.get_mut(&NodeId(2)).unwrap().sent_append(last);
        c.node(1).step(reject(2, t, last.0, RejectHint { conflict_term: None, conflict_index: LogIndex(3) })).unwrap();
        // Not below the match point, and at the hint otherwise.
        let pr = c.node(1).progress(NodeId(2)).unwrap().clone();
        assert_eq!(pr.next_index, LogIndex(3).max(pr.match_index.next()));
    }

    #[test]
    fn fast_backoff_skips_whole_conflicting_term() {
        let (mut c, t) = leader_with(8);
        let last = c.node(1).log().last_index();
        {
            let pr = c.node(1).progress.get_mut(&NodeId(2)).unwrap();
            pr.match_index = LogIndex::ZERO;
            pr.become_probe();
            pr.next_index = last.next();
            pr.sent_append(last);
        }
        // Follower holds term 1 at `last` (unknown to the leader after index 1): the leader
        // jumps to just after its last term-1 entry, index 2.
        c.node(1)
            .step(reject(2, t, last.0, RejectHint { conflict_term: Some(Term(1)), conflict_index: LogIndex(1) }))
            .unwrap();
        assert_eq!(c.node(1).progress(NodeId(2)).unwrap().next_index, LogIndex(2));
        // A term the leader never had: go to the follower's first index of that term.
        let next = c.node(1).progress(NodeId(2)).unwrap().next_index;
        c.node(1).progress.get_mut(&NodeId(2)).unwrap().state = ProgressState::Probe { paused: true };
        c.node(1)
            .step(reject(2, t, next.prev().0, RejectHint { conflict_term: Some(Term(0)), conflict_index: LogIndex(1) }))
            .unwrap();
        assert_eq!(c.node(1).progress(NodeId(2)).unwrap().next_index, LogIndex(1));
    }

    #[test]
    fn stale_rejection_is_ignored() {
        let (mut c, t) = leader_with(4);
        let before = c.node(1).progress(NodeId(2)).unwrap().clone();
        assert!(matches!(before.state, ProgressState::Replicate { .. }));
        c.node(1)
            .step(reject(2, t, before.match_index.0, RejectHint { conflict_term: None, conflict_index: LogIndex(1) }))
            .unwrap();
        assert_eq!(c.node(1).progress(NodeId(2)).unwrap(), &before);
    }

    #[test]
    fn followers_learn_commit_without_waiting_for_heartbeat() {
        let (mut c, _) = leader_with(0);
        let i = c.propose(1, b"x");
        c.deliver();
        for id in 2..=3 {
            assert_eq!(c.node(id).log().committed(), i, "node {id}");
        }
    }

    #[test]
    fn slow_but_not_lost_appends_keep_the_pipeline() {
        let (mut c, t) = leader_with(0);
        // An append is in flight (never delivered); heartbeat answers keep coming for less than
        // the stall window: the follower stays in the replicate state.
        c.node(1).propose(b"slow".to_vec()).unwrap();
        let rd = c.node(1).ready();
        c.node(1).advance(&rd);
        let hb = crate::HeartbeatResponse { read_seq: 0 };
        for _ in 0..3 {
            c.node(1).tick();
            c.node(1)
                .step(Message { from: NodeId(2), to: NodeId(1), term: t, body: MessageBody::HeartbeatResponse(hb) })
                .unwrap();
        }
        assert!(matches!(c.node(1).progress(NodeId(2)).unwrap().state, ProgressState::Replicate { .. }));
    }

    #[test]
    fn stalled_pipeline_falls_back_to_probe_on_heartbeat() {
        let (mut c, _) = leader_with(0);
        c.drop_if = Some(|m| matches!(m.body, MessageBody::AppendEntries(_)));
        c.propose(1, b"lost");
        c.deliver();
        c.drop_if = None;
        let i = c.node(1).log().last_index();
        c.run(c.nodes[&NodeId(1)].election_ticks);
        assert!(c.node(2).log().last_index() >= i);
        assert!(c.node(1).log().committed() >= i);
    }
}
