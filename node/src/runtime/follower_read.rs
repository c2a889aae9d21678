//! Follower reads with a staleness bound (`docs/replication.md`, "Reads").
//!
//! A follower records, on its own monotonic clock, when it last accepted a message from the
//! leader of its current term (an AppendEntries or a heartbeat) and the leader's commit index
//! that message carried (`AppendEntries::leader_commit`, `Heartbeat::leader_commit`). A read is
//! served locally when that contact is at most `max_staleness` old and the state machine has
//! applied that commit index. The read then reflects every write the leader had committed when
//! it sent that message, so every write acknowledged at least `max_staleness` plus one message
//! delay before the read started.
//!
//! A contact counts only if the entry at the carried commit index is of the leader's own term
//! (in this follower's log): a leader fresh in office may not yet know how far its predecessor
//! committed, and until its first entry commits its commit index can be lower than a write the
//! old leader already acknowledged.
//!
//! The core stays without a clock: the runtime's task stamps the time when it steps the
//! message ([`Tracker::on_leader_message`]).

use std::time::Duration;

use dqlite_raft::{LogIndex, NodeId, RawNode, StateRole, Term};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{RoleInfo, RuntimeError};

/// The last usable message from the leader, as this node saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaderContact {
    /// When the runtime stepped it (this node's monotonic clock).
    pub(crate) at: Instant,
    /// The term it was sent in.
    pub(crate) term: Term,
    /// Its sender.
    pub(crate) leader: NodeId,
    /// The highest leader commit index carried by a message of this term and leader (at least
    /// that of the message received at `at`).
    pub(crate) commit: LogIndex,
}

/// What a follower read needs to know, published by the runtime's task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct FollowerView {
    pub(crate) contact: Option<LeaderContact>,
    /// The state machine's applied index.
    pub(crate) applied: LogIndex,
}

/// Why a follower could not serve a read within its staleness bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StaleReason {
    /// This node knows no leader (an election is going on, or it is cut off).
    #[error("this node knows no leader")]
    NoLeader,
    /// No usable message from the current leader within the bound.
    #[error("no message from the leader within {max_staleness:?} (last one {since:?} ago)")]
    NoRecentContact {
        /// The bound asked for.
        max_staleness: Duration,
        /// How long ago the last usable message arrived (`None`: none in this term).
        since: Option<Duration>,
    },
    /// The leader was heard from recently but this node has not applied what it had committed.
    #[error("applied index {applied} is behind the leader's commit index {needed}")]
    Behind {
        /// This node's applied index.
        applied: LogIndex,
        /// The leader's commit index it must reach.
        needed: LogIndex,
    },
}

/// The task's side: updates the view.
#[derive(Debug)]
pub(crate) struct Tracker {
    tx: watch::Sender<FollowerView>,
}

impl Tracker {
    pub(crate) fn new(applied: LogIndex) -> (Tracker, watch::Receiver<FollowerView>) {
        let (tx, rx) = watch::channel(FollowerView { contact: None, applied });
        (Tracker { tx }, rx)
    }

    /// After the core stepped a message from `from` sent in `term` carrying the leader commit
    /// index `commit`: records it if the core accepted `from` as the leader of its current
    /// term and the entry at `commit` is of that term.
    pub(crate) fn on_leader_message(&self, core: &RawNode, from: NodeId, term: Term, commit: LogIndex) {
        if core.role() == StateRole::Leader || core.term() != term || core.leader() != Some(from) {
            return;
        }
        if core.log().term(commit) != Some(term) {
            return;
        }
        let now = Instant::now();
        self.tx.send_modify(|v| {
            let commit = match v.contact {
                Some(c) if c.term == term && c.leader == from => c.commit.max(commit),
                _ => commit,
            };
            v.contact = Some(LeaderContact { at: now, term, leader: from, commit });
        });
    }

    /// The state machine applied up to `applied`.
    pub(crate) fn on_applied(&self, applied: LogIndex) {
        self.tx.send_if_modified(|v| {
            if applied > v.applied {
                v.applied = applied;
                true
            } else {
                false
            }
        });
    }
}

/// Whether a read may run on this follower now: `Ok(index)` (the leader commit index it
/// reflects) or why not.
pub(crate) fn check(
    role: &RoleInfo,
    view: &FollowerView,
    now: Instant,
    max_staleness: Duration,
) -> Result<LogIndex, StaleReason> {
    let Some(leader) = role.leader else { return Err(StaleReason::NoLeader) };
    let contact = view.contact.filter(|c| c.term == role.term && c.leader == leader);
    let Some(c) = contact else {
        return Err(StaleReason::NoRecentContact { max_staleness, since: None });
    };
    let since = now.saturating_duration_since(c.at);
    if since > max_staleness {
        return Err(StaleReason::NoRecentContact { max_staleness, since: Some(since) });
    }
    if view.applied < c.commit {
        return Err(StaleReason::Behind { applied: view.applied, needed: c.commit });
    }
    Ok(c.commit)
}

/// How long a follower read waits for the node to become fresh enough before it fails: the
/// staleness bound, but at least two heartbeat intervals (so that a bound shorter than the
/// heartbeat interval still finds the next heartbeat).
pub(crate) fn wait_bound(max_staleness: Duration, heartbeat: Duration) -> Duration {
    max_staleness.max(heartbeat.saturating_mul(2))
}

/// Waits until a read on this non-leader node is within `max_staleness` (see the module docs),
/// at most [`wait_bound`]. `Ok(None)` if this node is (or became) the leader: the caller reads
/// as the leader does.
pub(crate) async fn wait_fresh(
    mut view: watch::Receiver<FollowerView>,
    mut role: watch::Receiver<RoleInfo>,
    max_staleness: Duration,
    heartbeat: Duration,
) -> Result<Option<LogIndex>, RuntimeError> {
    let deadline = Instant::now() + wait_bound(max_staleness, heartbeat);
    loop {
        let r = role.borrow_and_update().clone();
        if r.role == StateRole::Leader {
            return Ok(None);
        }
        let v = *view.borrow_and_update();
        let now = Instant::now();
        let reason = match check(&r, &v, now, max_staleness) {
            Ok(index) => return Ok(Some(index)),
            Err(reason) => reason,
        };
        if now >= deadline {
            return Err(RuntimeError::FollowerStale(reason));
        }
        tokio::select! {
            changed = view.changed() => changed.map_err(|_| RuntimeError::Stopped)?,
            changed = role.changed() => changed.map_err(|_| RuntimeError::Stopped)?,
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(term: u64, leader: Option<u64>) -> RoleInfo {
        RoleInfo { role: StateRole::Follower, term: Term(term), leader: leader.map(NodeId), leader_address: None }
    }

    fn view(at: Instant, term: u64, leader: u64, commit: u64, applied: u64) -> FollowerView {
        FollowerView {
            contact: Some(LeaderContact { at, term: Term(term), leader: NodeId(leader), commit: LogIndex(commit) }),
            applied: LogIndex(applied),
        }
    }

    #[test]
    fn fresh_only_within_the_bound_in_the_same_term_and_applied() {
        let t0 = Instant::now();
        let bound = Duration::from_millis(200);
        let v = view(t0, 3, 1, 10, 10);
        assert_eq!(check(&role(3, Some(1)), &v, t0 + Duration::from_millis(200), bound), Ok(LogIndex(10)));
        assert!(matches!(
            check(&role(3, Some(1)), &v, t0 + Duration::from_millis(201), bound),
            Err(StaleReason::NoRecentContact { since: Some(_), .. })
        ));
        // Another term or leader: the contact does not count.
        assert!(matches!(
            check(&role(4, Some(1)), &v, t0, bound),
            Err(StaleReason::NoRecentContact { since: None, .. })
        ));
        assert!(matches!(check(&role(3, Some(2)), &v, t0, bound), Err(StaleReason::NoRecentContact { .. })));
        assert_eq!(check(&role(3, None), &v, t0, bound), Err(StaleReason::NoLeader));
        // Not applied yet.
        let v = view(t0, 3, 1, 12, 11);
        assert_eq!(
            check(&role(3, Some(1)), &v, t0, bound),
            Err(StaleReason::Behind { applied: LogIndex(11), needed: LogIndex(12) })
        );
    }

    #[test]
    fn the_wait_covers_at_least_two_heartbeats() {
        let hb = Duration::from_millis(100);
        assert_eq!(wait_bound(Duration::from_millis(50), hb), Duration::from_millis(200));
        assert_eq!(wait_bound(Duration::from_secs(1), hb), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_cut_off_follower_fails_after_the_bound_and_a_fresh_one_waits_for_apply() {
        let (tracker, rx) = Tracker::new(LogIndex(5));
        let (role_tx, role_rx) = watch::channel(role(2, Some(1)));
        // Never heard from the leader: fails after the wait bound, not before.
        let t0 = Instant::now();
        let r = wait_fresh(rx.clone(), role_rx.clone(), Duration::from_millis(300), Duration::from_millis(100)).await;
        assert!(matches!(r, Err(RuntimeError::FollowerStale(StaleReason::NoRecentContact { since: None, .. }))));
        assert!(Instant::now() - t0 >= Duration::from_millis(300), "failed before the bound");
        // A contact that needs index 7: the read waits until it is applied.
        tracker.tx.send_modify(|v| {
            v.contact =
                Some(LeaderContact { at: Instant::now(), term: Term(2), leader: NodeId(1), commit: LogIndex(7) })
        });
        let waiting = tokio::spawn(wait_fresh(
            rx.clone(),
            role_rx.clone(),
            Duration::from_millis(300),
            Duration::from_millis(100),
        ));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a read must wait for the apply");
        tracker.on_applied(LogIndex(7));
        assert_eq!(waiting.await.unwrap().unwrap(), Some(LogIndex(7)));
        // Once this node leads, the caller reads as the leader.
        role_tx.send_modify(|r| r.role = StateRole::Leader);
        assert_eq!(
            wait_fresh(rx, role_rx, Duration::from_millis(300), Duration::from_millis(100)).await.unwrap(),
            None
        );
    }
}
