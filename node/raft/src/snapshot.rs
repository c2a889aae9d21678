//! Snapshots and log compaction (§7).
//!
//! Taking one: the application captures its state machine up to an applied index `I` and calls
//! [`RawNode::snapshot_taken`]; the core records the snapshot's metadata (term and configuration
//! at `I`) and [`RawNode::compact`] drops log entries it covers from memory.
//!
//! Sending one: when a follower needs entries that were compacted away, the leader puts the
//! follower in the snapshot state and asks the application, through
//! [`Ready::snapshot_requests`](crate::Ready::snapshot_requests), for a byte range of the
//! current snapshot; the application answers with [`RawNode::send_snapshot_chunk`], which
//! emits an InstallSnapshot message. One chunk is in flight per follower; each answer asks for
//! the next range. Lost chunks are asked for again after about an election timeout.
//!
//! Receiving one: chunks come out in [`Ready::snapshot_chunks`](crate::Ready::snapshot_chunks)
//! for the application to store; after the last, [`Ready::snapshot`](crate::Ready::snapshot)
//! says to install it.

use crate::error::{Error, Result};
use crate::message::{InstallSnapshot, InstallSnapshotResponse, MessageBody};
use crate::node::RawNode;
use crate::progress::ProgressState;
use crate::ready::{IncomingSnapshotChunk, SnapshotChunkRequest, SnapshotInstall, StateRole};
use crate::types::{LogIndex, NodeId, SnapshotMeta};

impl RawNode {
    /// Records that the state machine's state up to `index` (applied) is captured durably: in
    /// a snapshot file, or in the state machine's own files (see "Bounded memory" in
    /// [`crate::ready`]). Returns its metadata (to store beside it: it is the compaction base
    /// to pass to [`RawNode::restore`]). Transfers of an older snapshot in progress restart
    /// with this one. The log is not compacted: call [`RawNode::compact`].
    pub fn snapshot_taken(&mut self, index: LogIndex) -> Result<SnapshotMeta> {
        if index > self.log.applied {
            return Err(Error::SnapshotNotApplied { index, applied: self.log.applied });
        }
        if let Some(s) = &self.snapshot {
            if index < s.index {
                return Err(Error::SnapshotTooOld { index, current: s.index });
            }
        }
        let Some(term) = self.log.term(index) else {
            return Err(Error::SnapshotTooOld { index, current: self.log.compacted_index() });
        };
        let (configuration_index, configuration) = self.configuration_at(index);
        let meta = SnapshotMeta { index, term, configuration, configuration_index };
        tracing::debug!(id = ?self.id, ?index, "snapshot taken");
        self.snapshot = Some(meta.clone());
        // Followers receiving an older snapshot restart with this one.
        let stale: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| matches!(&p.state, ProgressState::Snapshot { meta: m, .. } if m.index != index))
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(p) = self.progress.get_mut(&id) {
                p.become_probe();
            }
            self.send_appends(id);
        }
        Ok(meta)
    }

    /// Drops entries up to `min(up_to, snapshot index)` from the in-memory log. Keeping some
    /// entries behind the snapshot lets slightly lagging followers catch up without one.
    /// Returns the new compaction point.
    pub fn compact(&mut self, up_to: LogIndex) -> LogIndex {
        let Some(s) = &self.snapshot else { return self.log.compacted_index() };
        let to = up_to.min(s.index);
        self.log.compact_to(to);
        // Keep the configuration in force at the compaction point and every later one.
        let keep_from = self.conf_history.iter().rposition(|c| c.0 <= to).unwrap_or(0);
        self.conf_history.drain(..keep_from);
        self.log.compacted_index()
    }

    /// Supplies the bytes asked for by `req` (possibly fewer than `max_bytes`; `done` marks the
    /// end of the snapshot). Errors if the request is no longer current (leadership lost,
    /// follower answered meanwhile); the application may ignore such errors.
    pub fn send_snapshot_chunk(&mut self, req: &SnapshotChunkRequest, data: Vec<u8>, done: bool) -> Result<()> {
        let unexpected = Error::UnexpectedSnapshotChunk { to: req.to, offset: req.offset };
        if self.role != StateRole::Leader {
            return Err(unexpected);
        }
        let Some(pr) = self.progress.get_mut(&req.to) else { return Err(unexpected) };
        match &mut pr.state {
            ProgressState::Snapshot { meta, acked_offset, .. } if *meta == req.meta && *acked_offset == req.offset => {}
            _ => return Err(unexpected),
        }
        self.send(
            req.to,
            MessageBody::InstallSnapshot(InstallSnapshot { meta: req.meta.clone(), offset: req.offset, data, done }),
        );
        Ok(())
    }

    /// Leader: switches `to` to the snapshot state and asks for the first chunk.
    pub(crate) fn start_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.snapshot.clone() else {
            tracing::error!(id = ?self.id, ?to, "follower needs compacted entries but no snapshot exists");
            return;
        };
        let Some(pr) = self.progress.get_mut(&to) else { return };
        tracing::debug!(id = ?self.id, ?to, index = ?meta.index, "sending snapshot");
        pr.state = ProgressState::Snapshot { meta: meta.clone(), acked_offset: 0, waiting: true, idle_rounds: 0 };
        self.request_chunk(to, meta, 0);
    }

    fn request_chunk(&mut self, to: NodeId, meta: SnapshotMeta, offset: u64) {
        self.chunk_requests.push(SnapshotChunkRequest { to, meta, offset, max_bytes: self.cfg.snapshot_chunk_bytes });
    }

    /// Leader, every heartbeat: asks again for chunks that got no answer for about an
    /// election timeout.
    pub(crate) fn retry_snapshots(&mut self) {
        let rounds = (self.election_ticks / self.heartbeat_ticks).max(2);
        let mut again = Vec::new();
        for (id, pr) in self.progress.iter_mut() {
            if let ProgressState::Snapshot { meta, acked_offset, waiting: true, idle_rounds } = &mut pr.state {
                *idle_rounds += 1;
                if *idle_rounds >= rounds {
                    *idle_rounds = 0;
                    again.push((*id, meta.clone(), *acked_offset));
                }
            }
        }
        for (id, meta, offset) in again {
            self.request_chunk(id, meta, offset);
        }
    }

    /// Follower side of a snapshot chunk.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, s: InstallSnapshot) {
        if !self.accept_leader(from) {
            return;
        }
        let index = s.meta.index;
        if index <= self.log.committed {
            // We already have everything it holds.
            self.incoming = None;
            let m = self.log.committed;
            self.send_after_persist(from, snap_resp(index, 0, true, m));
            return;
        }
        let expected = match &self.incoming {
            _ if s.offset == 0 => 0,
            Some((meta, got)) if *meta == s.meta => *got,
            _ => {
                self.send(from, snap_resp(index, 0, false, LogIndex::ZERO));
                return;
            }
        };
        if s.offset != expected {
            self.send(from, snap_resp(index, expected, false, LogIndex::ZERO));
            return;
        }
        let got = expected + s.data.len() as u64;
        self.chunks_in.push(IncomingSnapshotChunk {
            meta: s.meta.clone(),
            offset: s.offset,
            data: s.data,
            done: s.done,
        });
        if !s.done {
            self.incoming = Some((s.meta, got));
            self.send_after_persist(from, snap_resp(index, got, false, LogIndex::ZERO));
            return;
        }
        self.incoming = None;
        let keep = self.log.restore_snapshot(index, s.meta.term);
        if keep {
            self.conf_history.retain(|c| c.0 > index);
            self.conf_history.insert(0, (s.meta.configuration_index, s.meta.configuration.clone()));
        } else {
            self.conf_history = vec![(s.meta.configuration_index, s.meta.configuration.clone())];
        }
        tracing::info!(id = ?self.id, ?index, keep, "snapshot installed");
        self.snapshot = Some(s.meta.clone());
        self.install = Some(SnapshotInstall { meta: s.meta, keep_log: keep });
        self.send_after_persist(from, snap_resp(index, got, true, index));
    }

    /// Leader side of a snapshot chunk answer.
    pub(crate) fn handle_install_snapshot_response(&mut self, from: NodeId, r: InstallSnapshotResponse) {
        if self.role != StateRole::Leader {
            return;
        }
        let now = self.ticks;
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.last_active = now;
        // Answers to a snapshot no longer being sent (duplicates, or after a restart of the
        // transfer) are ignored: appends take over once the first `done` arrives.
        let ProgressState::Snapshot { meta, acked_offset, waiting, idle_rounds } = &mut pr.state else { return };
        if meta.index != r.snapshot_index {
            return;
        }
        if r.done {
            // Never backwards, never past our log (a follower cannot hold more than we sent).
            pr.match_index = pr.match_index.max(r.match_index.min(self.log.last_index()));
            pr.become_probe();
            self.maybe_commit();
            self.on_follower_progress(from);
            self.send_appends(from);
            return;
        }
        *acked_offset = r.next_offset;
        *waiting = true;
        *idle_rounds = 0;
        let meta = meta.clone();
        self.request_chunk(from, meta, r.next_offset);
    }
}

fn snap_resp(snapshot_index: LogIndex, next_offset: u64, done: bool, match_index: LogIndex) -> MessageBody {
    MessageBody::InstallSnapshotResponse(InstallSnapshotResponse { snapshot_index, next_offset, done, match_index })
}

#[cfg(test)]
mod tests {
    use crate::test_harness::Cluster;
    use crate::{Error, InstallSnapshot, LogIndex, Message, MessageBody, NodeId, ProgressState};

    fn lagging_cluster() -> Cluster {
        let mut c = Cluster::new(3, 50);
        for id in 1..=3 {
            c.node(id).cfg.snapshot_chunk_bytes = 4;
        }
        c.elect(1);
        c.run(1);
        c.crash(3);
        for i in 0..10u8 {
            c.propose(1, &[i; 3]);
        }
        c.run(1);
        c.take_snapshot(1, 0);
        c
    }

    #[test]
    fn lost_chunks_are_requested_again() {
        let mut c = lagging_cluster();
        c.restart(3);
        c.drop_if = Some(|m| matches!(m.body, MessageBody::InstallSnapshot(_)));
        let et = c.nodes[&NodeId(1)].election_ticks;
        c.run(et);
        assert!(matches!(c.node(1).progress(NodeId(3)).unwrap().state, ProgressState::Snapshot { .. }));
        c.drop_if = None;
        c.run(2 * et);
        assert_eq!(c.fsm(3).len(), 10);
    }

    #[test]
    fn out_of_order_chunk_is_answered_with_expected_offset() {
        let mut c = lagging_cluster();
        let meta = c.node(1).snapshot_meta().unwrap().clone();
        c.restart(3);
        let t = c.node(1).term();
        let chunk = |offset: u64, done: bool| Message {
            from: NodeId(1),
            to: NodeId(3),
            term: t,
            body: MessageBody::InstallSnapshot(InstallSnapshot { meta: meta.clone(), offset, data: vec![0; 4], done }),
        };
        c.node(3).step(chunk(0, false)).unwrap();
        c.node(3).step(chunk(8, false)).unwrap();
        let rd = c.node(3).ready();
        assert_eq!(rd.snapshot_chunks.len(), 1);
        let resp = rd.messages.iter().chain(rd.persisted_messages.iter()).filter_map(|m| match m.body {
            MessageBody::InstallSnapshotResponse(r) => Some(r),
            _ => None,
        });
        let offsets: Vec<u64> = resp.map(|r| r.next_offset).collect();
        assert_eq!(offsets.len(), 2);
        assert!(offsets.iter().all(|o| *o == 4), "{offsets:?}");
    }

    #[test]
    fn chunk_for_a_stale_request_is_refused() {
        let mut c = lagging_cluster();
        c.restart(3);
        // Run until the leader asks for a chunk, taking its Readys by hand.
        let mut req = None;
        for _ in 0..40 {
            c.tick_all();
            while let Some(m) = c.queue.pop_front() {
                let to = m.to;
                c.nodes.get_mut(&to).unwrap().step(m).unwrap();
                if to == NodeId(1) {
                    let rd = c.node(1).ready();
                    c.node(1).advance(&rd);
                    if let Some(r) = rd.snapshot_requests.first() {
                        req = Some(r.clone());
                    }
                    for m in rd.messages.into_iter().chain(rd.persisted_messages) {
                        c.queue.push_back(m);
                    }
                } else {
                    c.process(to);
                }
                if req.is_some() {
                    break;
                }
            }
            if req.is_some() {
                break;
            }
        }
        let req = req.expect("leader asked for a chunk");
        let mut wrong = req.clone();
        wrong.offset += 1;
        assert!(matches!(
            c.node(1).send_snapshot_chunk(&wrong, vec![1], false),
            Err(Error::UnexpectedSnapshotChunk { .. })
        ));
        c.node(1).send_snapshot_chunk(&req, vec![1], false).unwrap();
    }

    #[test]
    fn snapshot_already_covered_by_commit_is_acknowledged_at_once() {
        let mut c = lagging_cluster();
        let meta = c.node(1).snapshot_meta().unwrap().clone();
        let t = c.node(1).term();
        assert!(c.node(2).log().committed() >= meta.index);
        let m = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: t,
            body: MessageBody::InstallSnapshot(InstallSnapshot {
                meta: meta.clone(),
                offset: 0,
                data: vec![],
                done: true,
            }),
        };
        c.node(2).step(m).unwrap();
        let rd = c.node(2).ready();
        assert!(rd.snapshot.is_none());
        assert!(rd.persisted_messages.iter().any(
            |m| matches!(m.body, MessageBody::InstallSnapshotResponse(r) if r.done && r.match_index >= meta.index)
        ));
    }

    #[test]
    fn snapshot_older_than_the_current_one_is_refused_even_if_its_entries_are_held() {
        let mut c = Cluster::new(1, 51);
        c.elect(1);
        for i in 0..5u8 {
            c.propose(1, &[i]);
        }
        c.run(1);
        let applied = c.node(1).log().applied();
        c.node(1).snapshot_taken(applied).unwrap();
        assert!(c.node(1).log().term(applied.prev()).is_some());
        assert_eq!(
            c.node(1).snapshot_taken(applied.prev()),
            Err(Error::SnapshotTooOld { index: applied.prev(), current: applied })
        );
        // The same index again is fine (idempotent).
        c.node(1).snapshot_taken(applied).unwrap();
    }

    #[test]
    fn compaction_keeps_the_configuration_in_force_at_the_compaction_point() {
        let mut c = Cluster::new(1, 53);
        c.elect(1);
        c.run(1);
        c.propose(1, b"a");
        c.run(1);
        let old = c.node(1).log().applied();
        c.node(1)
            .propose_conf_change(crate::ConfChange::Add {
                id: NodeId(2),
                address: String::new(),
                role: crate::Role::Spare,
            })
            .unwrap();
        c.run(1);
        let first = c.node(1).snapshot_taken(old.prev()).unwrap();
        c.node(1).compact(old.prev());
        let m = c.node(1).snapshot_taken(old).unwrap();
        assert!(
            m.configuration.get(NodeId(2)).is_none(),
            "configuration at {old:?} lost by compaction to {:?}",
            first.index
        );
        assert_eq!(m.configuration_index, LogIndex(1));
    }

    /// The runtime's flow (issue 8): the state machine's own durable files are the snapshot.
    /// The leader compacts its log behind what the state machine holds, keeps writing, and a
    /// follower far behind gets an image captured on demand at the leader's current applied
    /// index; a restarted node is rebuilt from (hard state, compaction base, entries after it).
    #[test]
    fn compaction_without_a_snapshot_file_serves_lagging_followers_from_the_live_state() {
        let mut c = Cluster::new(3, 55);
        c.live_snapshots = true;
        for id in 1..=3 {
            c.node(id).cfg.snapshot_chunk_bytes = 8;
        }
        c.elect(1);
        c.run(1);
        c.crash(3);
        for i in 0..10u8 {
            c.propose(1, &[i; 3]);
        }
        c.run(1);
        // "Checkpoint": everything applied is durable in the state machine; keep 2 trailing.
        let base = c.take_snapshot(1, 2);
        assert_eq!(c.node(1).log().compacted_index(), LogIndex(base.index.0 - 2));
        // More writes: the state machine moves past the base.
        for i in 10..15u8 {
            c.propose(1, &[i; 3]);
        }
        c.run(1);
        let applied = c.node(1).log().applied();
        assert!(applied > base.index);
        c.restart(3);
        c.run(3 * c.nodes[&NodeId(1)].election_ticks);
        assert_eq!(c.fsm(3), c.fsm(1), "the lagging follower caught up from the live image");
        assert_eq!(c.fsm(3).len(), 15);
        // It was first asked for the base's meta, then for the image captured on demand.
        let asked: Vec<LogIndex> = c.requests_seen.iter().filter(|r| r.0 == NodeId(3)).map(|r| r.1).collect();
        assert_eq!(asked.first(), Some(&base.index), "{asked:?}");
        assert!(asked.iter().any(|i| *i >= applied), "{asked:?}");
        assert!(c.node(3).snapshot_meta().is_some_and(|m| m.index >= applied));

        // Restart the leader from its compaction base and the entries after it only.
        let disk = c.disks[&NodeId(1)].clone();
        assert!(disk.entries.iter().all(|e| e.index > base.index), "the log store kept only entries after the base");
        c.crash(1);
        c.restart(1);
        assert!(c.node(1).log().first_index() > LogIndex(1));
        assert_eq!(c.node(1).log().last_index(), disk.entries.last().map_or(base.index, |e| e.index));
        let l = c.wait_leader(500);
        c.propose(l.0, b"after");
        c.run(5);
        for id in 1..=3 {
            assert_eq!(c.fsm(id).len(), 16, "node {id}");
            assert_eq!(c.fsm(id), c.fsm(l.0));
        }
    }

    #[test]
    fn compact_never_passes_the_snapshot_and_old_snapshots_are_refused() {
        let mut c = lagging_cluster();
        let meta = c.node(1).snapshot_meta().unwrap().clone();
        assert_eq!(c.node(1).compact(LogIndex(meta.index.0 + 100)), meta.index);
        assert!(matches!(c.node(1).snapshot_taken(LogIndex(1)), Err(Error::SnapshotTooOld { .. })));
        let mut blank = Cluster::new(1, 1);
        assert_eq!(blank.node(1).compact(LogIndex(5)), LogIndex::ZERO);
    }
}
