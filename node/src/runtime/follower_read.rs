//! Follower reads with a staleness bound (`docs/replication.md`, "Reads").
//!
//! A follower records, on its own monotonic clock, when it accepted messages from the leader of
//! its current term (AppendEntries and heartbeats) and the leader's commit index they carried
//! (`AppendEntries::leader_commit`, `Heartbeat::leader_commit`); it keeps the recent ones. A read
//! is served locally when one of these contacts is at most `max_staleness` old and the state
//! machine has applied its commit index. The read then reflects every write the leader had
//! committed when it sent that message, so every write acknowledged at least `max_staleness`
//! plus one message delay before the read started.
//!
//! A contact counts only if its commit index is at or after an index this follower knows holds
//! an entry of the leader's own term (the lowest such index it saw, `term_floor`), i.e. the
//! leader had committed an entry of its term: a leader fresh in office may not yet know how far
//! its predecessor committed, and until its first entry commits its commit index can be lower
//! than a write the old leader already acknowledged. (Entries of a term are contiguous in the
//! leader's log and only the leader of that term makes them, so any index of term `T` in the
//! follower's log is at or after the leader's first one.) The check happens at read time, so a
//! follower whose log trails the commit index (the slower replica under load) still records
//! contacts and reads once it has applied them.
//!
//! The core stays without a clock: the runtime's task stamps the time when it steps the
//! message ([`Tracker::on_leader_message`]).

use std::collections::VecDeque;
use std::time::Duration;

use dqlite_raft::{LogIndex, NodeId, RawNode, StateRole, Term};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{RoleInfo, RuntimeError};

/// Most recent leader contacts kept (see [`FollowerView::contacts`]).
const CONTACTS_MAX: usize = 128;
/// Contacts closer together than this share one slot (the newer replaces the older), so the
/// kept ones span at least `CONTACTS_MAX x CONTACT_SPACING` (640 ms) under any message rate.
const CONTACT_SPACING: Duration = Duration::from_millis(5);

/// What a follower read needs to know, published by the runtime's task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FollowerView {
    /// The term and leader the contacts are from.
    pub(crate) leader: Option<(Term, NodeId)>,
    /// Usable messages from that leader, oldest first: when the runtime stepped each (this
    /// node's monotonic clock) and the highest leader commit index carried by a message of
    /// that leader up to then. Commit indexes strictly increase. Keeping a few lets a read use
    /// an older contact whose commit index is applied while newer ones are still being
    /// applied (a steady write load).
    pub(crate) contacts: VecDeque<(Instant, LogIndex)>,
    /// The lowest index this node saw holding an entry of `leader`'s term (`None`: none yet).
    pub(crate) term_floor: Option<LogIndex>,
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
    /// The leader has not yet committed an entry of its own term (as far as this node knows).
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotSettled,
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
        let (tx, rx) =
            watch::channel(FollowerView { leader: None, contacts: VecDeque::new(), term_floor: None, applied });
        (Tracker { tx }, rx)
    }

    /// After the core stepped a message from `from` sent in `term` carrying the leader commit
    /// index `commit`: records it if the core accepted `from` as the leader of its current
    /// term, with what the log now shows of that term (the term floor).
    pub(crate) fn on_leader_message(&self, core: &RawNode, from: NodeId, term: Term, commit: LogIndex) {
        if core.role() == StateRole::Leader || core.term() != term || core.leader() != Some(from) {
            return;
        }
        let log = core.log();
        let at_commit = (log.term(commit) == Some(term)).then_some(commit);
        let at_last = (log.last_term() == term).then_some(log.last_index());
        let floor = match (at_commit, at_last) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.record(Instant::now(), term, from, commit, floor);
    }

    fn record(&self, now: Instant, term: Term, from: NodeId, commit: LogIndex, floor: Option<LogIndex>) {
        self.tx.send_modify(|v| {
            if v.leader != Some((term, from)) {
                v.leader = Some((term, from));
                v.contacts.clear();
                v.term_floor = None;
            }
            if let Some(f) = floor {
                v.term_floor = Some(v.term_floor.map_or(f, |old| old.min(f)));
            }
            let commit = v.contacts.back().map_or(commit, |(_, c)| commit.max(*c));
            match v.contacts.back_mut() {
                Some(last) if last.1 == commit || now.saturating_duration_since(last.0) < CONTACT_SPACING => {
                    *last = (now, commit);
                }
                _ => {
                    v.contacts.push_back((now, commit));
                    if v.contacts.len() > CONTACTS_MAX {
                        v.contacts.pop_front();
                    }
                }
            }
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
/// reflects: that of the newest contact at most `max_staleness` old whose commit index is
/// applied and at or after the term floor) or why not.
pub(crate) fn check(
    role: &RoleInfo,
    view: &FollowerView,
    now: Instant,
    max_staleness: Duration,
) -> Result<LogIndex, StaleReason> {
    let Some(leader) = role.leader else { return Err(StaleReason::NoLeader) };
    if view.leader != Some((role.term, leader)) || view.contacts.is_empty() {
        return Err(StaleReason::NoRecentContact { max_staleness, since: None });
    }
    let fresh = |at: Instant| now.saturating_duration_since(at) <= max_staleness;
    let Some(floor) = view.term_floor else { return Err(StaleReason::LeaderNotSettled) };
    let settled = |c: LogIndex| c >= floor;
    if let Some((at, c)) = view.contacts.iter().rev().find(|(_, c)| settled(*c) && *c <= view.applied) {
        if fresh(*at) {
            return Ok(*c);
        }
    }
    if view.contacts.back().is_some_and(|(at, c)| fresh(*at) && !settled(*c)) {
        return Err(StaleReason::LeaderNotSettled);
    }
    match view.contacts.iter().find(|(at, c)| fresh(*at) && settled(*c)) {
        Some((_, needed)) => Err(StaleReason::Behind { applied: view.applied, needed: *needed }),
        None => Err(StaleReason::NoRecentContact {
            max_staleness,
            since: view.contacts.back().map(|(at, _)| now.saturating_duration_since(*at)),
        }),
    }
}

/// How long a follower read waits for the node to become fresh enough before it fails: two
/// heartbeat intervals, whatever the bound (a connected follower hears from the leader once a
/// heartbeat interval, and applies within milliseconds).
pub(crate) fn wait_bound(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(2)
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
    let deadline = Instant::now() + wait_bound(heartbeat);
    loop {
        let r = role.borrow_and_update().clone();
        if r.role == StateRole::Leader {
            return Ok(None);
        }
        let now = Instant::now();
        let checked = check(&r, &view.borrow_and_update(), now, max_staleness);
        let reason = match checked {
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

    fn view(term: u64, leader: u64, contacts: &[(Instant, u64)], applied: u64) -> FollowerView {
        FollowerView {
            leader: Some((Term(term), NodeId(leader))),
            contacts: contacts.iter().map(|(at, c)| (*at, LogIndex(*c))).collect(),
            term_floor: Some(LogIndex(1)),
            applied: LogIndex(applied),
        }
    }

    #[test]
    fn fresh_only_within_the_bound_in_the_same_term_and_applied() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let bound = ms(200);
        let v = view(3, 1, &[(t0, 10)], 10);
        assert_eq!(check(&role(3, Some(1)), &v, t0 + ms(200), bound), Ok(LogIndex(10)));
        assert!(matches!(
            check(&role(3, Some(1)), &v, t0 + ms(201), bound),
            Err(StaleReason::NoRecentContact { since: Some(_), .. })
        ));
        // Another term or leader: the contacts do not count.
        assert!(matches!(
            check(&role(4, Some(1)), &v, t0, bound),
            Err(StaleReason::NoRecentContact { since: None, .. })
        ));
        assert!(matches!(check(&role(3, Some(2)), &v, t0, bound), Err(StaleReason::NoRecentContact { .. })));
        assert_eq!(check(&role(3, None), &v, t0, bound), Err(StaleReason::NoLeader));
        // Not applied yet.
        let v = view(3, 1, &[(t0, 12)], 11);
        assert_eq!(
            check(&role(3, Some(1)), &v, t0, bound),
            Err(StaleReason::Behind { applied: LogIndex(11), needed: LogIndex(12) })
        );
        // An older contact whose index is applied serves while it is within the bound.
        let v = view(3, 1, &[(t0, 8), (t0 + ms(50), 12), (t0 + ms(100), 15)], 13);
        assert_eq!(check(&role(3, Some(1)), &v, t0 + ms(240), bound), Ok(LogIndex(12)));
        assert_eq!(
            check(&role(3, Some(1)), &v, t0 + ms(260), bound),
            Err(StaleReason::Behind { applied: LogIndex(13), needed: LogIndex(15) })
        );
        // A contact before the leader's first entry of its term is not enough: its commit index
        // may trail what the previous leader acknowledged.
        let mut v = view(3, 1, &[(t0, 8), (t0 + ms(50), 12)], 20);
        v.term_floor = Some(LogIndex(10));
        assert_eq!(check(&role(3, Some(1)), &v, t0 + ms(60), bound), Ok(LogIndex(12)));
        v.term_floor = Some(LogIndex(13));
        assert_eq!(check(&role(3, Some(1)), &v, t0 + ms(60), bound), Err(StaleReason::LeaderNotSettled));
        v.term_floor = None;
        assert_eq!(check(&role(3, Some(1)), &v, t0 + ms(60), bound), Err(StaleReason::LeaderNotSettled));
    }

    #[test]
    fn contacts_keep_increasing_commits_and_reset_with_the_term() {
        let (tracker, rx) = Tracker::new(LogIndex(0));
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        tracker.record(t0, Term(2), NodeId(1), LogIndex(5), None);
        assert_eq!(rx.borrow().term_floor, None);
        // A reordered older message: the commit index does not go back, the time moves on.
        tracker.record(t0 + ms(10), Term(2), NodeId(1), LogIndex(4), Some(LogIndex(6)));
        tracker.record(t0 + ms(20), Term(2), NodeId(1), LogIndex(9), Some(LogIndex(9)));
        assert_eq!(rx.borrow().term_floor, Some(LogIndex(6)), "the lowest index of the term seen");
        // Within the spacing: replaces the last one.
        tracker.record(t0 + ms(21), Term(2), NodeId(1), LogIndex(11), None);
        let c: Vec<(Instant, LogIndex)> = rx.borrow().contacts.iter().copied().collect();
        assert_eq!(c, vec![(t0 + ms(10), LogIndex(5)), (t0 + ms(21), LogIndex(11))]);
        for i in 0..(CONTACTS_MAX as u64 + 10) {
            tracker.record(t0 + ms(100 + 10 * i), Term(2), NodeId(1), LogIndex(20 + i), None);
        }
        assert_eq!(rx.borrow().contacts.len(), CONTACTS_MAX);
        // A new term starts afresh.
        tracker.record(t0 + ms(5000), Term(3), NodeId(2), LogIndex(3), None);
        assert_eq!(rx.borrow().contacts.iter().copied().collect::<Vec<_>>(), vec![(t0 + ms(5000), LogIndex(3))]);
        assert_eq!(rx.borrow().leader, Some((Term(3), NodeId(2))));
        assert_eq!(rx.borrow().term_floor, None);
    }

    #[test]
    fn the_wait_is_two_heartbeats() {
        assert_eq!(wait_bound(Duration::from_millis(100)), Duration::from_millis(200));
    }

    #[tokio::test]
    async fn a_cut_off_follower_fails_after_the_wait_and_a_fresh_one_waits_for_apply() {
        let (tracker, rx) = Tracker::new(LogIndex(5));
        let (role_tx, role_rx) = watch::channel(role(2, Some(1)));
        let hb = Duration::from_millis(100);
        let bound = Duration::from_secs(10);
        // Never heard from the leader: fails after the wait, not before.
        let t0 = Instant::now();
        let r = wait_fresh(rx.clone(), role_rx.clone(), bound, hb).await;
        assert!(matches!(r, Err(RuntimeError::FollowerStale(StaleReason::NoRecentContact { since: None, .. }))));
        assert!(Instant::now() - t0 >= wait_bound(hb), "failed before the wait was over");
        // A contact that needs index 7: the read waits until it is applied.
        tracker.record(Instant::now(), Term(2), NodeId(1), LogIndex(7), Some(LogIndex(7)));
        let waiting = tokio::spawn(wait_fresh(rx.clone(), role_rx.clone(), bound, hb));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a read must wait for the apply");
        tracker.on_applied(LogIndex(7));
        assert_eq!(waiting.await.unwrap().unwrap(), Some(LogIndex(7)));
        // Once this node leads, the caller reads as the leader.
        role_tx.send_modify(|r| r.role = StateRole::Leader);
        assert_eq!(wait_fresh(rx, role_rx, bound, hb).await.unwrap(), None);
    }
}
