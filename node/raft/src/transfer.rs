//! Leadership transfer (thesis §3.10): catch the target up, send it TimeoutNow, and give up
//! after an election timeout. Proposals are refused meanwhile.

use crate::error::{Error, Result};
use crate::message::MessageBody;
use crate::node::RawNode;
use crate::ready::Event;
use crate::types::NodeId;

/// An ongoing transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// The intended new leader.
    pub(crate) target: NodeId,
    /// Ticks since it started.
    pub(crate) elapsed: u32,
    /// TimeoutNow was sent.
    pub(crate) sent: bool,
}

impl RawNode {
    /// Hands leadership to `target`, or to the most up-to-date voter if `None`. Returns the
    /// chosen target. Completion shows as this node becoming a follower; failure as
    /// [`Event::TransferAborted`] after an election timeout.
    pub fn transfer_leadership(&mut self, target: Option<NodeId>) -> Result<NodeId> {
        if !self.leader_durable() {
            return Err(Error::NotLeader { leader: self.leader() });
        }
        if self.transfer.is_some() {
            return Err(Error::TransferInProgress);
        }
        let conf = self.configuration();
        let target = match target {
            Some(t) => {
                if t == self.id || !conf.is_voter(t) {
                    return Err(Error::InvalidTransferTarget(t));
                }
                t
            }
            None => conf
                .voters()
                .filter(|v| *v != self.id)
                .filter_map(|v| self.progress.get(&v).map(|p| (p.match_index, v)))
                .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
                .map(|(_, v)| v)
                .ok_or(Error::NoTransferTarget)?,
        };
        tracing::info!(id = ?self.id, ?target, "leadership transfer started");
        self.transfer = Some(Transfer { target, elapsed: 0, sent: false });
        if let Some(pr) = self.progress.get_mut(&target) {
            pr.resume();
        }
        self.send_appends(target);
        self.check_transfer(target);
        Ok(target)
    }

    /// Leader: if `id` is the transfer target and fully caught up, tell it to campaign.
    pub(crate) fn check_transfer(&mut self, id: NodeId) {
        let Some(t) = &self.transfer else { return };
        if t.target != id || t.sent {
            return;
        }
        let caught_up = self.progress.get(&id).is_some_and(|p| p.match_index == self.log.last_index());
        if caught_up {
            if let Some(t) = &mut self.transfer {
                t.sent = true;
            }
            self.send(id, MessageBody::TimeoutNow);
        }
    }

    /// Leader tick: aborts a transfer older than an election timeout.
    pub(crate) fn tick_transfer(&mut self) {
        let Some(t) = &mut self.transfer else { return };
        t.elapsed += 1;
        if t.elapsed >= self.election_ticks {
            let target = t.target;
            self.transfer = None;
            tracing::info!(id = ?self.id, ?target, "leadership transfer aborted");
            self.events.push(Event::TransferAborted { target });
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::test_harness::Cluster;
    use crate::{Error, NodeId, Role};

    #[test]
    fn transfer_to_none_picks_most_up_to_date_voter() {
        let mut c = Cluster::new(3, 70);
        c.elect(1);
        c.run(1);
        c.crash(2);
        c.propose(1, b"x");
        c.run(1);
        assert_eq!(c.node(1).transfer_leadership(None), Ok(NodeId(3)));
        assert_eq!(c.node(1).transfer_leadership(None), Err(Error::TransferInProgress));
    }

    #[test]
    fn transfer_waits_for_catch_up_before_timeout_now() {
        let mut c = Cluster::new(3, 71);
        c.elect(1);
        c.run(1);
        c.isolate(2);
        c.propose(1, b"x");
        c.deliver();
        c.node(1).transfer_leadership(Some(NodeId(2))).unwrap();
        let rd = c.node(1).ready();
        assert!(!rd.messages.iter().any(|m| m.body == crate::MessageBody::TimeoutNow), "target not caught up yet");
        c.node(1).advance(&rd);
        c.heal();
        c.run(30);
        assert_eq!(c.leaders(), vec![NodeId(2)]);
    }

    #[test]
    fn transfer_target_must_be_a_voter() {
        let mut c = Cluster::new(2, 72);
        c.elect(1);
        c.run(1);
        assert_eq!(c.node(1).transfer_leadership(Some(NodeId(9))), Err(Error::InvalidTransferTarget(NodeId(9))));
        c.node(1).propose_conf_change(crate::ConfChange::Assign { id: NodeId(2), role: Role::Standby }).unwrap();
        c.run(2);
        assert_eq!(c.node(1).transfer_leadership(None), Err(Error::NoTransferTarget));
        assert_eq!(c.node(2).transfer_leadership(None), Err(Error::NotLeader { leader: Some(NodeId(1)) }));
    }
}
