//! [`Ready`]: everything the core asks the application to do, and the order to do it in.
//!
//! # The persistence contract
//!
//! Handle each `Ready` in the order they were returned, doing the steps in this order:
//!
//! 1. Send [`Ready::messages`] (they need nothing durable: a leader's appends may go out while
//!    its own disk write is running, thesis §10.2.1; a new leader's messages wait in
//!    `persisted_messages` until its first entry of the term, and so its term, is durable).
//! 2. Store [`Ready::snapshot_chunks`] (bytes of a snapshot being received, at their offsets).
//! 3. If [`Ready::snapshot`] is set, install it: restore the state machine from the received
//!    snapshot and make it the base of the durable log. If [`SnapshotInstall::keep_log`] is false,
//!    delete every log entry; otherwise delete the entries up to and including its index.
//! 4. Append [`Ready::entries`] durably. The first entry may overwrite: delete every stored
//!    entry with an index `>= entries[0].index` first.
//! 5. Store [`Ready::hard_state`] durably if set (before or atomically with step 4's fsync:
//!    a vote must never be lost). It is set only when the term or the vote changed: a stream of
//!    commits never requires a metadata write. Its `commit` field is a hint that may be stored
//!    or dropped ([`HardState`]); an application that wants a fresher commit index on restart
//!    may store [`RawNode::log`](crate::RawNode::log)`().committed()` opportunistically, but
//!    only once the entries up to it are durable.
//! 6. After everything above is durable (and everything asked by earlier `Ready`s), call
//!    [`RawNode::persisted`](crate::RawNode::persisted) with [`Ready::persist_marker`], then send
//!    [`Ready::persisted_messages`] (votes and acknowledgements that promise durability).
//! 7. Apply [`Ready::committed_entries`] to the state machine in order, then call
//!    [`RawNode::applied`](crate::RawNode::applied). Committed entries are only handed out once
//!    they are persisted locally.
//! 8. Serve [`Ready::read_states`] (each is safe to read once the state machine has applied
//!    its index, which the core has already checked).
//! 9. For each of [`Ready::snapshot_requests`], read the bytes of the current snapshot at the
//!    requested range and pass them to
//!    [`RawNode::send_snapshot_chunk`](crate::RawNode::send_snapshot_chunk).
//! 10. Look at [`Ready::events`] (role changes, failed reads, membership progress).
//!
//! [`RawNode::advance`](crate::RawNode::advance) does the bookkeeping calls of steps 6 and 7 for
//! an application that handles a whole `Ready` synchronously.
//!
//! # Leadership is announced once the term is durable
//!
//! A node that won an election is *leader-elect* until step 6 has been done for the `Ready`
//! that carried its new term (and its first entry of the term). Until then
//! [`RawNode::role`](crate::RawNode::role) says `Candidate`, `is_leader()` is false, proposals
//! and reads are refused, and nothing of the term is sent; the [`Event::RoleChanged`] that says
//! `Leader` comes in the first `Ready` after `persisted` covered that entry.
//!
//! # Bounded memory: compaction without a snapshot file
//!
//! The core holds the log entries after its compaction point in memory. To bound that, the
//! application calls [`RawNode::snapshot_taken`](crate::RawNode::snapshot_taken)`(i)` once its
//! state machine holds everything up to an applied index `i` durably — in a snapshot file, or
//! in its own durable files (dqlite: the database files after a checkpoint), which is then "the
//! snapshot" — and stores the returned [`SnapshotMeta`] as its compaction base. Then
//! [`RawNode::compact`](crate::RawNode::compact)`(i - trailing)` drops entries from memory (the
//! application may delete them from its log store too). On restart, pass
//! [`RawNode::restore`](crate::RawNode::restore) that meta and only the stored entries after
//! the compaction point (trailing entries behind the base are kept if contiguous).
//! The stored meta must reach the disk after everything asked by the `Ready`s returned before
//! `snapshot_taken` (queue it behind their writes): an earlier `Ready`'s snapshot install still
//! waiting for its fsync would otherwise land on top of the newer base and set it back.
//!
//! A follower that needs entries below the compaction point gets a snapshot: the leader emits a
//! [`SnapshotChunkRequest`] for its current meta. An application that keeps no snapshot file and
//! whose state has moved past `req.meta.index` answers a request at offset 0 by capturing a
//! consistent image of its state now (at applied index `j`) and calling `snapshot_taken(j)`:
//! every transfer of an older snapshot restarts, and the next `Ready` requests offset 0 of the
//! new meta, which it serves from that image (fixed for the whole transfer). Requests that are
//! no longer current are refused by `send_snapshot_chunk` and may be ignored.

use crate::message::Message;
use crate::types::{Entry, HardState, LogIndex, NodeId, SnapshotMeta, Term};

/// What the role of a node is right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking for pre-votes; its term has not changed.
    PreCandidate,
    /// Asking for votes in a new term.
    Candidate,
    /// Leads the cluster.
    Leader,
}

/// A linearizable read that may now be served: the state machine has applied `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The context given to [`RawNode::read_index`](crate::RawNode::read_index).
    pub ctx: Vec<u8>,
    /// The commit index the read is ordered after.
    pub index: LogIndex,
}

/// A received snapshot to install (see step 3 of the contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInstall {
    /// The snapshot.
    pub meta: SnapshotMeta,
    /// True if the log entries after `meta.index` are kept (they match the leader's).
    pub keep_log: bool,
}

/// Bytes of a snapshot being received from the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingSnapshotChunk {
    /// Which snapshot. A chunk at offset 0 starts a new one: discard any partial one.
    pub meta: SnapshotMeta,
    /// Byte offset.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// True for the last chunk (a [`Ready::snapshot`] follows).
    pub done: bool,
}

/// The leader needs bytes `[offset, offset + max_bytes)` of its current snapshot for `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunkRequest {
    /// The follower.
    pub to: NodeId,
    /// The snapshot (the one given to [`RawNode::snapshot_taken`](crate::RawNode::snapshot_taken)).
    pub meta: SnapshotMeta,
    /// Start of the range.
    pub offset: u64,
    /// Most bytes to supply.
    pub max_bytes: u64,
}

/// Something the application may want to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The node's role, term or known leader changed.
    RoleChanged {
        /// The new role.
        role: StateRole,
        /// The current term.
        term: Term,
        /// The known leader.
        leader: Option<NodeId>,
    },
    /// A read requested with [`RawNode::read_index`](crate::RawNode::read_index) will not be
    /// served: leadership was lost. Retry on the new leader.
    ReadIndexFailed {
        /// The read's context.
        ctx: Vec<u8>,
    },
    /// A membership change that had to wait for catch-up was appended at `index`.
    ConfChangeAppended {
        /// The node being changed.
        node: NodeId,
        /// The configuration entry's index.
        index: LogIndex,
    },
    /// A membership change waiting for catch-up was abandoned.
    ConfChangeAborted {
        /// The node being changed.
        node: NodeId,
    },
    /// A leadership transfer did not complete within an election timeout (or leadership was
    /// lost another way).
    TransferAborted {
        /// The intended new leader.
        target: NodeId,
    },
}

/// Everything the core wants done; see the module docs for the order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "a Ready holds work that must be done"]
pub struct Ready {
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Snapshot bytes received from the leader, to store.
    pub snapshot_chunks: Vec<IncomingSnapshotChunk>,
    /// A received snapshot to install.
    pub snapshot: Option<SnapshotInstall>,
    /// Entries to append durably (may overwrite a suffix).
    pub entries: Vec<Entry>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Messages to send only after everything above is durable.
    pub persisted_messages: Vec<Message>,
    /// Committed entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Reads that may now be served.
    pub read_states: Vec<ReadState>,
    /// Snapshot bytes the leader needs to send.
    pub snapshot_requests: Vec<SnapshotChunkRequest>,
    /// Notifications.
    pub events: Vec<Event>,
}

impl Ready {
    /// True if there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.snapshot.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.persisted_messages.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.snapshot_requests.is_empty()
            && self.events.is_empty()
    }

    /// What to pass to [`RawNode::persisted`](crate::RawNode::persisted) once this `Ready`
    /// is durable: the last entry appended, or the installed snapshot's base.
    pub fn persist_marker(&self) -> Option<(LogIndex, Term)> {
        if let Some(e) = self.entries.last() {
            return Some((e.index, e.term));
        }
        self.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageBody;
    use crate::types::{EntryKind, NodeId};

    #[test]
    fn is_empty_checks_every_field() {
        assert!(Ready::default().is_empty());
        let m = Message { from: NodeId(1), to: NodeId(2), term: Term(1), body: MessageBody::TimeoutNow };
        let e = Entry { term: Term(1), index: LogIndex(1), kind: EntryKind::Barrier, data: vec![] };
        let meta = SnapshotMeta {
            index: LogIndex(1),
            term: Term(1),
            configuration: crate::Configuration::new(),
            configuration_index: LogIndex(0),
        };
        let fills: Vec<fn(&mut Ready, &Message, &Entry, &SnapshotMeta)> = vec![
            |r, m, _, _| r.messages.push(m.clone()),
            |r, _, _, s| {
                r.snapshot_chunks.push(IncomingSnapshotChunk { meta: s.clone(), offset: 0, data: vec![], done: false })
            },
            |r, _, _, s| r.snapshot = Some(SnapshotInstall { meta: s.clone(), keep_log: false }),
            |r, _, e, _| r.entries.push(e.clone()),
            |r, _, _, _| r.hard_state = Some(HardState::default()),
            |r, m, _, _| r.persisted_messages.push(m.clone()),
            |r, _, e, _| r.committed_entries.push(e.clone()),
            |r, _, _, _| r.read_states.push(ReadState { ctx: vec![], index: LogIndex(0) }),
            |r, _, _, s| {
                r.snapshot_requests.push(SnapshotChunkRequest {
                    to: NodeId(2),
                    meta: s.clone(),
                    offset: 0,
                    max_bytes: 1,
                })
            },
            |r, _, _, _| r.events.push(Event::TransferAborted { target: NodeId(2) }),
        ];
        for (k, fill) in fills.iter().enumerate() {
            let mut r = Ready::default();
            fill(&mut r, &m, &e, &meta);
            assert!(!r.is_empty(), "field {k} ignored by is_empty");
        }
    }

    #[test]
    fn persist_marker_prefers_last_entry_then_snapshot() {
        let meta = SnapshotMeta {
            index: LogIndex(5),
            term: Term(2),
            configuration: crate::Configuration::new(),
            configuration_index: LogIndex(0),
        };
        let mut r = Ready { snapshot: Some(SnapshotInstall { meta, keep_log: true }), ..Ready::default() };
        assert_eq!(r.persist_marker(), Some((LogIndex(5), Term(2))));
        r.entries.push(Entry { term: Term(3), index: LogIndex(6), kind: EntryKind::Barrier, data: vec![] });
        assert_eq!(r.persist_marker(), Some((LogIndex(6), Term(3))));
        assert_eq!(Ready::default().persist_marker(), None);
    }
}
