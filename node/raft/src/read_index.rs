//! Linearizable reads with ReadIndex (thesis §6.4): the leader records its commit index,
//! confirms it is still leader with a heartbeat round acknowledged by a majority, and the read
//! is served once the state machine has applied that index. A new leader first commits an
//! entry of its term (its no-op) so that its commit index is current.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::node::RawNode;
use crate::ready::ReadState;
use crate::types::{LogIndex, NodeId};

/// A read waiting for its heartbeat round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingRead {
    pub(crate) ctx: Vec<u8>,
    pub(crate) index: LogIndex,
    pub(crate) seq: u64,
    pub(crate) acks: BTreeSet<NodeId>,
}

impl RawNode {
    /// Requests a linearizable read identified by `ctx`. It comes back in
    /// [`Ready::read_states`](crate::Ready::read_states) once safe to serve, or as
    /// [`Event::ReadIndexFailed`](crate::Event::ReadIndexFailed) if leadership is lost first.
    pub fn read_index(&mut self, ctx: Vec<u8>) -> Result<()> {
        if !self.leader_durable() {
            return Err(Error::NotLeader { leader: self.leader() });
        }
        if !self.committed_in_term() {
            self.reads_waiting_commit.push(ctx);
            return Ok(());
        }
        self.start_reads(vec![ctx]);
        Ok(())
    }

    fn start_reads(&mut self, ctxs: Vec<Vec<u8>>) {
        if ctxs.is_empty() {
            return;
        }
        self.read_seq += 1;
        let seq = self.read_seq;
        let index = self.log.committed;
        for ctx in ctxs {
            let mut acks = BTreeSet::new();
            acks.insert(self.id);
            self.pending_reads.push_back(PendingRead { ctx, index, seq, acks });
        }
        self.release_confirmed_reads();
        if !self.pending_reads.is_empty() {
            self.broadcast_heartbeat();
        }
    }

    /// Leader: the first entry of this term committed; reads parked until then may start.
    pub(crate) fn on_first_commit_in_term(&mut self) {
        let waiting = std::mem::take(&mut self.reads_waiting_commit);
        self.start_reads(waiting);
    }

    /// Leader: `from` answered a heartbeat carrying `seq`: it confirms every read up to `seq`.
    pub(crate) fn on_read_ack(&mut self, from: NodeId, seq: u64) {
        if seq == 0 {
            return;
        }
        for r in self.pending_reads.iter_mut() {
            if r.seq <= seq {
                r.acks.insert(from);
            }
        }
        self.release_confirmed_reads();
    }

    fn release_confirmed_reads(&mut self) {
        while let Some(r) = self.pending_reads.front() {
            if !self.is_quorum(&r.acks) {
                break;
            }
            if let Some(r) = self.pending_reads.pop_front() {
                self.confirmed_reads.push_back(ReadState { ctx: r.ctx, index: r.index });
            }
        }
    }
}
