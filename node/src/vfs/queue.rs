//! The per-database fair queue for SQLite's WAL write lock (safe code).
//!
//! SQLite gives a second writer `SQLITE_BUSY` at once. Our `xShmLock` instead hands the WAL
//! write-lock slot out in ticket order: a connection that asks while the lock is held or while
//! others wait ahead of it gets a ticket and `SQLITE_BUSY`; SQLite then calls the connection's
//! busy handler (installed by [`super::VfsConnection`]), which sleeps on the queue's condition
//! variable until the ticket is at the head and the lock is free, and asks SQLite to retry.
//! The retry re-opens the read snapshot too, so a queued `BEGIN IMMEDIATE` never fails with
//! `SQLITE_BUSY_SNAPSHOT`. The apply connection of a follower is served before client writers.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A connection's identity inside the VFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

#[derive(Debug, Default)]
struct QueueState {
    holder: Option<ConnId>,
    waiting: VecDeque<ConnId>,
}

/// The FIFO of connections waiting for one database's WAL write lock.
#[derive(Debug, Default)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    changed: Condvar,
}

/// What [`WriteQueue::try_acquire`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Take the real lock now (call [`WriteQueue::acquired`] or [`WriteQueue::failed`] after).
    Go,
    /// Not this connection's turn: answer `SQLITE_BUSY` (a ticket is held).
    Wait,
}

impl WriteQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this mutex leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `conn` asks for the write lock. `priority` tickets go to the head of the line and pass
    /// the gate; other connections get the lock only while `gate()` is true (the db layer
    /// closes it while an earlier commit's fate is unknown).
    pub(crate) fn try_acquire(&self, conn: ConnId, priority: bool, gate: &dyn Fn() -> bool) -> Turn {
        let mut s = self.lock();
        if s.holder == Some(conn) {
            return Turn::Go;
        }
        let front = s.waiting.front().copied();
        if s.holder.is_none() && (front.is_none() || front == Some(conn)) && (priority || gate()) {
            if front == Some(conn) {
                s.waiting.pop_front();
            }
            s.holder = Some(conn);
            return Turn::Go;
        }
        if !s.waiting.contains(&conn) {
            if priority {
                s.waiting.push_front(conn);
            } else {
                s.waiting.push_back(conn);
            }
        }
        Turn::Wait
    }

    /// The real lock could not be taken (another process holds it): keep the head of the line.
    pub(crate) fn failed(&self, conn: ConnId) {
        let mut s = self.lock();
        if s.holder == Some(conn) {
            s.holder = None;
            s.waiting.push_front(conn);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// `conn` released the write lock.
    pub(crate) fn release(&self, conn: ConnId) {
        let mut s = self.lock();
        if s.holder == Some(conn) {
            s.holder = None;
        }
        drop(s);
        self.changed.notify_all();
    }

    /// `conn` stops waiting (its statement ended, or its busy timeout expired).
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut s = self.lock();
        let before = s.waiting.len();
        s.waiting.retain(|c| *c != conn);
        let removed = s.waiting.len() != before;
        drop(s);
        if removed {
            self.changed.notify_all();
        }
    }

    /// True if `conn` holds the lock.
    pub(crate) fn holds(&self, conn: ConnId) -> bool {
        self.lock().holder == Some(conn)
    }

    /// Wakes the waiting connections (the gate may have opened).
    pub(crate) fn wake(&self) {
        // Taken so that a waiter between its gate check and its wait cannot miss the wake-up.
        drop(self.lock());
        self.changed.notify_all();
    }

    /// Blocks until `conn` may retry (its ticket is at the head, the lock is free and `gate()`
    /// is true, or it holds no ticket), or `deadline` passes. Returns false on timeout.
    pub(crate) fn wait_turn(&self, conn: ConnId, deadline: Instant, gate: &dyn Fn() -> bool) -> bool {
        let mut s = self.lock();
        loop {
            let queued = s.waiting.contains(&conn);
            if !queued {
                // BUSY for another reason (recovery, checkpoint): retry after a short pause.
                drop(s);
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1).min(deadline - now));
                return true;
            }
            if s.holder.is_none() && s.waiting.front() == Some(&conn) && gate() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded: the gate is re-checked even if a wake-up is missed.
            s = match self.changed.wait_timeout(s, (deadline - now).min(Duration::from_millis(50))) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> bool {
        true
    }

    #[test]
    fn fifo_order_and_priority() {
        let q = WriteQueue::default();
        let (a, b, c, p) = (ConnId(1), ConnId(2), ConnId(3), ConnId(9));
        assert_eq!(q.try_acquire(a, false, &open), Turn::Go);
        assert_eq!(q.try_acquire(b, false, &open), Turn::Wait);
        assert_eq!(q.try_acquire(c, false, &open), Turn::Wait);
        assert_eq!(q.try_acquire(p, true, &open), Turn::Wait);
        q.release(a);
        // b is not at the head any more: p jumped the line.
        assert_eq!(q.try_acquire(b, false, &open), Turn::Wait);
        assert_eq!(q.try_acquire(p, true, &open), Turn::Go);
        q.release(p);
        assert_eq!(q.try_acquire(c, false, &open), Turn::Wait);
        assert_eq!(q.try_acquire(b, false, &open), Turn::Go);
        q.release(b);
        q.forget(c);
        assert_eq!(q.try_acquire(a, false, &open), Turn::Go);
        assert!(q.holds(a));
    }

    #[test]
    fn a_closed_gate_holds_writers_but_not_priority_ones() {
        let q = WriteQueue::default();
        let closed = || false;
        assert_eq!(q.try_acquire(ConnId(1), false, &closed), Turn::Wait);
        assert!(!q.wait_turn(ConnId(1), Instant::now() + Duration::from_millis(20), &closed));
        // The priority connection goes to the head of the line and passes the closed gate.
        assert_eq!(q.try_acquire(ConnId(9), true, &closed), Turn::Wait);
        assert!(q.wait_turn(ConnId(9), Instant::now() + Duration::from_millis(20), &open));
        assert_eq!(q.try_acquire(ConnId(9), true, &closed), Turn::Go);
        q.release(ConnId(9));
        assert!(q.wait_turn(ConnId(1), Instant::now() + Duration::from_millis(20), &open));
        assert_eq!(q.try_acquire(ConnId(1), false, &open), Turn::Go);
    }

    #[test]
    fn wait_turn_times_out() {
        let q = WriteQueue::default();
        assert_eq!(q.try_acquire(ConnId(1), false, &open), Turn::Go);
        assert_eq!(q.try_acquire(ConnId(2), false, &open), Turn::Wait);
        assert!(!q.wait_turn(ConnId(2), Instant::now() + Duration::from_millis(20), &open));
    }
}
