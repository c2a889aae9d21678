//! Single-server membership changes (thesis §4.1), one at a time, with catch-up before a node
//! becomes a voter (thesis §4.2.1) and removal of the leader (thesis §4.2.2).
//!
//! A configuration takes effect on each server as soon as its entry is in that server's log,
//! committed or not; a truncated configuration entry reverts to the previous configuration.

use crate::configuration::{Configuration, Server};
use crate::error::{Error, Result};
use crate::node::RawNode;
use crate::progress::Progress;
use crate::ready::{Event, StateRole};
use crate::types::{EntryKind, LogIndex, NodeId, Role};

/// Most catch-up rounds before a promotion is abandoned.
pub const MAX_CATCH_UP_ROUNDS: u32 = 10;

/// A membership change requested by the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfChange {
    /// Adds a new server with a role. A new voter is first caught up with the log.
    Add {
        /// Its id.
        id: NodeId,
        /// Its address (opaque to the core).
        address: String,
        /// Its role.
        role: Role,
    },
    /// Changes a member's role. Promotion to voter first catches the server up.
    Assign {
        /// The member.
        id: NodeId,
        /// Its new role.
        role: Role,
    },
    /// Removes a member (possibly the leader itself: it steps down once the change commits).
    Remove {
        /// The member.
        id: NodeId,
    },
}

/// What [`RawNode::propose_conf_change`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeStatus {
    /// The new configuration was appended at this index.
    Appended(LogIndex),
    /// The server is being caught up; an [`Event::ConfChangeAppended`] or
    /// [`Event::ConfChangeAborted`] follows.
    CatchingUp,
}

/// A server being caught up before it becomes a voter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Promotion {
    /// The server as it will be in the new configuration.
    pub(crate) server: Server,
    /// Current round, from 1.
    pub(crate) round: u32,
    /// The leader's last index when the round started.
    pub(crate) round_target: LogIndex,
    /// Ticks since the round started.
    pub(crate) round_elapsed: u32,
}

impl RawNode {
    /// Proposes a membership change. Fails if one is already in progress (uncommitted or
    /// catching up), if the leader has not yet committed an entry of its term, or if the
    /// change is invalid.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<ConfChangeStatus> {
        if !self.leader_durable() {
            return Err(Error::NotLeader { leader: self.leader() });
        }
        if self.transfer.is_some() {
            return Err(Error::TransferInProgress);
        }
        if self.configuration_index() > self.log.committed || self.promotion.is_some() || !self.committed_in_term() {
            return Err(Error::ConfChangeInProgress);
        }
        let conf = self.configuration();
        let mut new = conf.clone();
        match cc {
            ConfChange::Add { id, address, role } => {
                if id == NodeId::ZERO {
                    return Err(Error::InvalidSender);
                }
                if conf.get(id).is_some() {
                    return Err(Error::AlreadyMember(id));
                }
                let server = Server { id, address, role };
                if role == Role::Voter {
                    self.start_promotion(server);
                    return Ok(ConfChangeStatus::CatchingUp);
                }
                new.upsert(server);
            }
            ConfChange::Assign { id, role } => {
                let Some(s) = conf.get(id) else { return Err(Error::NotMember(id)) };
                if s.role == role {
                    return Err(Error::RoleUnchanged(id));
                }
                let mut server = s.clone();
                server.role = role;
                if role == Role::Voter {
                    self.start_promotion(server);
                    return Ok(ConfChangeStatus::CatchingUp);
                }
                if s.role == Role::Voter && conf.voter_count() == 1 {
                    return Err(Error::NoVoterLeft);
                }
                new.upsert(server);
            }
            ConfChange::Remove { id } => {
                let Some(s) = conf.get(id) else { return Err(Error::NotMember(id)) };
                if s.role == Role::Voter && conf.voter_count() == 1 {
                    return Err(Error::NoVoterLeft);
                }
                new.remove(id);
            }
        }
        Ok(ConfChangeStatus::Appended(self.append_configuration(new)))
    }

    /// Leader: appends a configuration entry; it takes effect at once.
    fn append_configuration(&mut self, conf: Configuration) -> LogIndex {
        let index = self.log.last_index().next();
        self.conf_history.push((index, conf.clone()));
        tracing::info!(id = ?self.id, ?index, ?conf, "appending configuration");
        self.sync_progress();
        let i = self.append_local(EntryKind::Configuration, conf.encode());
        debug_assert_eq!(i, index);
        // The quorum may have shrunk.
        self.maybe_commit();
        i
    }

    fn start_promotion(&mut self, server: Server) {
        let id = server.id;
        let last = self.log.last_index();
        tracing::info!(leader = ?self.id, node = ?id, "catching up before promotion to voter");
        self.promotion = Some(Promotion { server, round: 1, round_target: last, round_elapsed: 0 });
        if id != self.id {
            let now = self.ticks;
            self.progress.entry(id).or_insert_with(|| Progress::new(last, now));
            self.send_appends(id);
        }
        self.on_follower_progress(id);
    }

    /// Leader: keeps one progress per replica (voters, standbys) and the catching-up server.
    pub(crate) fn sync_progress(&mut self) {
        let conf = self.configuration().clone();
        let promoting = self.promotion.as_ref().map(|p| p.server.id);
        self.progress.retain(|id, _| conf.replicas().any(|r| r == *id) || Some(*id) == promoting);
        let last = self.log.last_index();
        let mut added = Vec::new();
        for r in conf.replicas() {
            if r != self.id && !self.progress.contains_key(&r) {
                self.progress.insert(r, Progress::new(last, self.ticks));
                added.push(r);
            }
        }
        for r in added {
            self.send_appends(r);
        }
        // No transfer check is needed: membership changes are refused while a transfer runs,
        // and a promotion finishing meanwhile only adds a voter.
    }

    /// Leader: a follower's match index moved; finish a catch-up round if it is done.
    pub(crate) fn on_follower_progress(&mut self, id: NodeId) {
        self.check_transfer(id);
        let Some(p) = &self.promotion else { return };
        if p.server.id != id {
            return;
        }
        let matched = if id == self.id {
            self.log.last_index()
        } else {
            self.progress.get(&id).map_or(LogIndex::ZERO, |pr| pr.match_index)
        };
        if matched < p.round_target {
            return;
        }
        if p.round_elapsed < self.election_ticks {
            let server = p.server.clone();
            self.promotion = None;
            let mut conf = self.configuration().clone();
            conf.upsert(server);
            let index = self.append_configuration(conf);
            self.events.push(Event::ConfChangeAppended { node: id, index });
        } else {
            self.next_promotion_round();
        }
    }

    fn next_promotion_round(&mut self) {
        let last = self.log.last_index();
        let Some(p) = &mut self.promotion else { return };
        p.round += 1;
        p.round_target = last;
        p.round_elapsed = 0;
        if p.round > MAX_CATCH_UP_ROUNDS {
            let id = p.server.id;
            tracing::warn!(leader = ?self.id, node = ?id, "promotion abandoned: node does not catch up");
            self.promotion = None;
            self.sync_progress();
            self.events.push(Event::ConfChangeAborted { node: id });
        }
    }

    pub(crate) fn tick_promotion(&mut self) {
        let Some(p) = &mut self.promotion else { return };
        p.round_elapsed += 1;
        if p.round_elapsed >= self.election_ticks {
            let id = p.server.id;
            let matched = self.progress.get(&id).map_or(LogIndex::ZERO, |pr| pr.match_index);
            if matched < p.round_target {
                self.next_promotion_round();
            } else {
                self.on_follower_progress(id);
            }
        }
    }

    /// Leader: after the commit index moved, a leader no longer a voter in a committed
    /// configuration steps down (thesis §4.2.2), handing over to the most up-to-date voter.
    pub(crate) fn after_commit_membership(&mut self) {
        if self.role != StateRole::Leader
            || self.configuration_index() > self.log.committed
            || self.configuration().is_voter(self.id)
        {
            return;
        }
        let last = self.log.last_index();
        let best = self
            .configuration()
            .voters()
            .filter_map(|v| self.progress.get(&v).map(|p| (p.match_index, v)))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        tracing::info!(id = ?self.id, "leader removed from voters: stepping down");
        if let Some((m, v)) = best {
            if m == last {
                self.send(v, crate::message::MessageBody::TimeoutNow);
            }
        }
        self.become_follower(self.term, None);
    }
}

#[cfg(test)]
mod tests {
    use crate::test_harness::Cluster;
    use crate::{ConfChange, ConfChangeStatus, Error, Event, NodeId, Role};

    #[test]
    fn promotion_of_unreachable_node_is_abandoned_after_max_rounds() {
        let mut c = Cluster::new(3, 60);
        c.elect(1);
        c.run(1);
        c.add_blank(4);
        c.crash(4);
        let st = c
            .node(1)
            .propose_conf_change(ConfChange::Add { id: NodeId(4), address: "x".into(), role: Role::Voter })
            .unwrap();
        assert_eq!(st, ConfChangeStatus::CatchingUp);
        assert_eq!(
            c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(2) }),
            Err(Error::ConfChangeInProgress)
        );
        let et = c.nodes[&NodeId(1)].election_ticks;
        c.run(et * (super::MAX_CATCH_UP_ROUNDS + 1));
        assert!(c.events[&NodeId(1)].contains(&Event::ConfChangeAborted { node: NodeId(4) }));
        assert!(c.node(1).configuration().get(NodeId(4)).is_none());
        assert!(c.node(1).progress(NodeId(4)).is_none());
        // The next change is accepted.
        c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(3) }).unwrap();
    }

    #[test]
    fn promotion_gets_exactly_max_rounds() {
        let mut c = Cluster::new(3, 64);
        c.elect(1);
        c.run(1);
        c.add_blank(4);
        c.crash(4);
        c.node(1)
            .propose_conf_change(ConfChange::Add { id: NodeId(4), address: String::new(), role: Role::Voter })
            .unwrap();
        let et = c.nodes[&NodeId(1)].election_ticks;
        let aborted = |c: &Cluster| {
            c.events.get(&NodeId(1)).is_some_and(|e| e.contains(&Event::ConfChangeAborted { node: NodeId(4) }))
        };
        for _ in 0..et * super::MAX_CATCH_UP_ROUNDS - 1 {
            c.tick_all();
            c.deliver();
        }
        assert!(!aborted(&c), "aborted before {} rounds", super::MAX_CATCH_UP_ROUNDS);
        c.run(2);
        assert!(aborted(&c));
    }

    #[test]
    fn slow_promotion_round_starts_another_round() {
        let mut c = Cluster::new(3, 65);
        c.elect(1);
        c.run(1);
        c.add_blank(4);
        c.node(1)
            .propose_conf_change(ConfChange::Add { id: NodeId(4), address: String::new(), role: Role::Voter })
            .unwrap();
        // Node 4 is unreachable for one and a half rounds, then catches up.
        c.isolate(4);
        let et = c.nodes[&NodeId(1)].election_ticks;
        c.run(et + et / 2);
        assert_eq!(c.node(1).promotion.as_ref().map(|p| p.round), Some(2));
        c.heal();
        c.run(et);
        assert!(c.node(1).configuration().is_voter(NodeId(4)));
    }

    #[test]
    fn removed_leader_keeps_leading_until_the_change_commits() {
        let mut c = Cluster::new(3, 66);
        c.elect(1);
        c.run(1);
        c.isolate(2);
        c.isolate(3);
        c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(1) }).unwrap();
        c.process(NodeId(1));
        c.deliver();
        assert!(c.node(1).is_leader(), "stepped down before the removal committed");
        assert!(!c.node(1).configuration().is_voter(NodeId(1)));
        c.heal();
        c.run(30);
        assert!(!c.node(1).is_leader());
        assert!(c.node(2).configuration().voters().eq([NodeId(2), NodeId(3)]));
    }

    #[test]
    fn assign_standby_to_voter_catches_up_then_counts_for_quorum() {
        let mut c = Cluster::new(2, 61);
        c.elect(1);
        c.run(1);
        c.add_blank(3);
        c.node(1)
            .propose_conf_change(ConfChange::Add { id: NodeId(3), address: String::new(), role: Role::Standby })
            .unwrap();
        c.run(3);
        assert_eq!(c.node(1).configuration().role(NodeId(3)), Some(Role::Standby));
        let st = c.node(1).propose_conf_change(ConfChange::Assign { id: NodeId(3), role: Role::Voter }).unwrap();
        assert_eq!(st, ConfChangeStatus::CatchingUp);
        c.run(3);
        assert_eq!(c.node(1).configuration().role(NodeId(3)), Some(Role::Voter));
        // Now 3 voters: losing node 2 keeps a quorum.
        c.crash(2);
        let i = c.propose(1, b"x");
        c.run(2);
        assert!(c.node(1).log().committed() >= i);
    }

    #[test]
    fn demote_voter_to_spare_stops_replication_to_it() {
        let mut c = Cluster::new(3, 62);
        c.elect(1);
        c.run(1);
        c.node(1).propose_conf_change(ConfChange::Assign { id: NodeId(3), role: Role::Spare }).unwrap();
        c.run(3);
        assert!(c.node(1).progress(NodeId(3)).is_none());
        c.propose(1, b"x");
        c.run(2);
        assert!(c.fsm(3).is_empty());
        assert_eq!(c.fsm(2).len(), 1);
        assert_eq!(
            c.node(1).propose_conf_change(ConfChange::Add { id: NodeId(3), address: String::new(), role: Role::Spare }),
            Err(Error::AlreadyMember(NodeId(3)))
        );
        assert_eq!(
            c.node(2).propose_conf_change(ConfChange::Remove { id: NodeId(3) }),
            Err(Error::NotLeader { leader: Some(NodeId(1)) })
        );
    }

    #[test]
    fn conf_change_waits_for_first_commit_in_term() {
        let mut c = Cluster::new(3, 63);
        c.isolate(2);
        c.isolate(3);
        for n in c.nodes.values_mut() {
            n.election_elapsed = n.election_ticks;
        }
        c.node(1).campaign(false, false);
        c.heal();
        // Deliver only the votes, not the appends: become leader without committing.
        c.process(NodeId(1));
        while let Some(m) = c.queue.pop_front() {
            if matches!(m.body, crate::MessageBody::AppendEntries(_) | crate::MessageBody::Heartbeat(_)) {
                continue;
            }
            let to = m.to;
            c.nodes.get_mut(&to).unwrap().step(m).unwrap();
            c.process(to);
        }
        assert!(c.node(1).is_leader());
        assert_eq!(
            c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(3) }),
            Err(Error::ConfChangeInProgress)
        );
    }
}
