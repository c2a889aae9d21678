//! The leader's view of each follower: how far its log matches, and how to send to it
//! (probe one message at a time, replicate with a bounded pipeline, or send a snapshot).

use std::collections::VecDeque;

use crate::types::{LogIndex, SnapshotMeta};

/// How the leader sends to one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The match point is unknown: one AppendEntries at a time, then wait for an answer or
    /// the next heartbeat.
    Probe {
        /// An append is outstanding.
        paused: bool,
    },
    /// The follower is in sync: appends are pipelined; `inflight` holds the last index of each
    /// unacknowledged append, bounded by `max_inflight_appends`.
    Replicate {
        /// Last index of each append in flight, ascending.
        inflight: VecDeque<LogIndex>,
    },
    /// The follower needs the snapshot.
    Snapshot {
        /// The snapshot being sent.
        meta: SnapshotMeta,
        /// Bytes acknowledged so far.
        acked_offset: u64,
        /// A chunk request or chunk is outstanding.
        waiting: bool,
        /// Heartbeat rounds without an answer while `waiting`.
        idle_rounds: u32,
    },
}

/// The leader's bookkeeping for one follower (voter, standby, or a node catching up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Highest index known to match the leader's log.
    pub match_index: LogIndex,
    /// Next index to send.
    pub next_index: LogIndex,
    /// How to send.
    pub state: ProgressState,
    /// The leader's tick count when this follower was last heard from (check-quorum).
    pub last_active: u64,
    /// Leader tick since which the follower has been behind without its match index moving
    /// (`None` when caught up). Detects a pipeline that lost a message.
    pub behind_since: Option<u64>,
    /// The leader commit index carried by the last AppendEntries sent.
    pub commit_sent: LogIndex,
}

impl Progress {
    /// A fresh progress for a leader whose last index is `last`, at leader tick `now`.
    pub fn new(last: LogIndex, now: u64) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index: last.next(),
            state: ProgressState::Probe { paused: false },
            last_active: now,
            behind_since: None,
            commit_sent: LogIndex::ZERO,
        }
    }

    /// True if nothing may be sent right now.
    pub fn is_paused(&self, max_inflight: usize) -> bool {
        match &self.state {
            ProgressState::Probe { paused } => *paused,
            ProgressState::Replicate { inflight } => inflight.len() >= max_inflight,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Switches to probing from just after the match point (or `next` if given and larger).
    pub fn become_probe(&mut self) {
        self.state = ProgressState::Probe { paused: false };
        self.next_index = self.match_index.next();
    }

    /// Switches to pipelined replication.
    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate { inflight: VecDeque::new() };
        self.next_index = self.match_index.next();
    }

    /// Records that an append ending at `last` was sent.
    pub fn sent_append(&mut self, last: LogIndex) {
        match &mut self.state {
            ProgressState::Probe { paused } => *paused = true,
            ProgressState::Replicate { inflight } => {
                if last >= self.next_index {
                    inflight.push_back(last);
                    self.next_index = last.next();
                }
            }
            ProgressState::Snapshot { .. } => debug_assert!(false, "append sent in snapshot state"),
        }
    }

    /// Handles a successful append acknowledgement. Returns true if the match index moved.
    pub fn on_ack(&mut self, index: LogIndex) -> bool {
        let moved = index > self.match_index;
        if moved {
            self.match_index = index;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        match &mut self.state {
            ProgressState::Probe { .. } => self.become_replicate(),
            ProgressState::Replicate { inflight } => {
                while inflight.front().is_some_and(|&i| i <= index) {
                    inflight.pop_front();
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
        moved
    }

    /// Handles a rejection of the append whose `prev_log_index` was `rejected`, moving
    /// `next_index` to `new_next` (clamped above the match point). Returns false if stale.
    pub fn on_reject(&mut self, rejected: LogIndex, new_next: LogIndex) -> bool {
        match &self.state {
            ProgressState::Replicate { .. } => {
                if rejected <= self.match_index {
                    return false;
                }
            }
            ProgressState::Probe { .. } => {
                if rejected != self.next_index.prev() {
                    return false;
                }
            }
            ProgressState::Snapshot { .. } => return false,
        }
        self.state = ProgressState::Probe { paused: false };
        self.next_index = new_next.min(rejected).max(self.match_index.next());
        true
    }

    /// Unpauses a probe (a heartbeat answer shows the follower is reachable).
    pub fn resume(&mut self) {
        if let ProgressState::Probe { paused } = &mut self.state {
            *paused = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_is_bounded_and_acks_free_slots() {
        let mut p = Progress::new(LogIndex(10), 0);
        p.match_index = LogIndex(10);
        p.become_replicate();
        p.sent_append(LogIndex(12));
        p.sent_append(LogIndex(14));
        assert!(p.is_paused(2));
        assert_eq!(p.next_index, LogIndex(15));
        assert!(p.on_ack(LogIndex(12)));
        assert!(!p.is_paused(2));
        assert!(!p.on_ack(LogIndex(11)));
    }

    #[test]
    fn probe_rejects_move_next_but_never_below_match() {
        let mut p = Progress::new(LogIndex(10), 0);
        p.match_index = LogIndex(3);
        p.sent_append(LogIndex(11));
        assert!(!p.on_reject(LogIndex(7), LogIndex(5)), "stale reject ignored");
        assert!(p.on_reject(LogIndex(10), LogIndex(1)));
        assert_eq!(p.next_index, LogIndex(4));
        assert!(!p.is_paused(4));
    }
}
