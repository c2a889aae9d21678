//! The per-database fair queue for SQLite's WAL write lock (safe code).
//!
//! SQLite gives a second writer `SQLITE_BUSY` at once. Our `xShmLock` instead hands the WAL
//! write-lock slot out in ticket order: a connection that asks while the lock is held or while
//! others wait ahead of it gets a ticket and `SQLITE_BUSY`; SQLite then calls the connection's
//! busy handler (installed by [`super::VfsConnection`]), which sleeps on the queue's condition
//! variable until the ticket is at the head and the lock is free, and asks SQLite to retry.
//! Each ticket has a condition variable of its own and only the head of the line is woken
//! when the lock is released or the gate opens: waking every waiter on each hand-over made
//! all of them compete for the CPU with the one connection that could go on.
//! The retry re-opens the read snapshot too, so a queued `BEGIN IMMEDIATE` never fails with
//! `SQLITE_BUSY_SNAPSHOT`. The apply connection of a follower is served before client writers.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A connection's identity inside the VFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A ticket: the connection and the condition variable it sleeps on.
#[derive(Debug)]
struct Ticket {
    conn: ConnId,
    turn: Arc<Condvar>,
}

#[derive(Debug, Default)]
struct QueueState {
    holder: Option<ConnId>,
    waiting: VecDeque<Ticket>,
    /// Connections inside [`WriteQueue::wait_turn`]'s wait, and waits that ended by their
    /// time-out rather than a wake-up (for tests).
    asleep: usize,
    timeouts: usize,
}

impl QueueState {
    fn front(&self) -> Option<ConnId> {
        self.waiting.front().map(|t| t.conn)
    }

    fn ticket(&self, conn: ConnId) -> Option<&Ticket> {
        self.waiting.iter().find(|t| t.conn == conn)
    }

    /// Wakes the connection at the head of the line: the only one that may go next.
    fn wake_head(&self) {
        if let Some(t) = self.waiting.front() {
            t.turn.notify_one();
        }
    }
}

/// How often a waiter re-checks its turn even without a wake-up (the gate's state lives
/// outside the queue).
const RECHECK: Duration = Duration::from_millis(50);

/// The FIFO of connections waiting for one database's WAL write lock.
#[derive(Debug)]
pub(crate) struct WriteQueue {
    state: Mutex<QueueState>,
    recheck: Duration,
}

impl Default for WriteQueue {
    fn default() -> Self {
        WriteQueue { state: Mutex::default(), recheck: RECHECK }
    }
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
        let front = s.front();
        if s.holder.is_none() && (front.is_none() || front == Some(conn)) && (priority || gate()) {
            if front == Some(conn) {
                s.waiting.pop_front();
            }
            s.holder = Some(conn);
            return Turn::Go;
        }
        if s.ticket(conn).is_none() {
            let t = Ticket { conn, turn: Arc::new(Condvar::new()) };
            if priority {
                s.waiting.push_front(t);
            } else {
                s.waiting.push_back(t);
            }
        }
        Turn::Wait
    }

    /// The real lock could not be taken (another process holds it): keep the head of the line.
    pub(crate) fn failed(&self, conn: ConnId) {
        let mut s = self.lock();
        if s.holder == Some(conn) {
            s.holder = None;
            s.waiting.push_front(Ticket { conn, turn: Arc::new(Condvar::new()) });
        }
        s.wake_head();
    }

    /// `conn` released the write lock.
    pub(crate) fn release(&self, conn: ConnId) {
        let mut s = self.lock();
        if s.holder == Some(conn) {
            s.holder = None;
        }
        s.wake_head();
    }

    /// `conn` stops waiting (its statement ended, or its busy timeout expired).
    pub(crate) fn forget(&self, conn: ConnId) {
        let mut s = self.lock();
        let before = s.waiting.len();
        s.waiting.retain(|t| t.conn != conn);
        if s.waiting.len() != before {
            // The head may have left: the next one may go.
            s.wake_head();
        }
    }

    /// True if `conn` holds the lock.
    pub(crate) fn holds(&self, conn: ConnId) -> bool {
        self.lock().holder == Some(conn)
    }

    /// Wakes the waiting connections (the gate may have opened).
    pub(crate) fn wake(&self) {
        // Under the lock, so that a waiter between its gate check and its wait cannot miss
        // the wake-up.
        self.lock().wake_head();
    }

    /// Blocks until `conn` may retry (its ticket is at the head, the lock is free and `gate()`
    /// is true, or it holds no ticket), or `deadline` passes. Returns false on timeout.
    pub(crate) fn wait_turn(&self, conn: ConnId, deadline: Instant, gate: &dyn Fn() -> bool) -> bool {
        let mut s = self.lock();
        loop {
            let Some(turn) = s.ticket(conn).map(|t| t.turn.clone()) else {
                // BUSY for another reason (recovery, checkpoint): retry after a short pause.
                drop(s);
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1).min(deadline - now));
                return true;
            };
            if s.holder.is_none() && s.front() == Some(conn) && gate() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            // Bounded: the gate is re-checked even if a wake-up is missed.
            s.asleep += 1;
            let timed_out;
            (s, timed_out) = match turn.wait_timeout(s, (deadline - now).min(self.recheck)) {
                Ok((g, t)) => (g, t.timed_out()),
                Err(p) => {
                    let (g, t) = p.into_inner();
                    (g, t.timed_out())
                }
            };
            s.asleep -= 1;
            s.timeouts += usize::from(timed_out);
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

    /// A queue whose waiters never re-check on their own: a missed wake-up shows as a
    /// `wait_turn` that runs into its deadline.
    fn no_recheck() -> WriteQueue {
        WriteQueue { state: Mutex::default(), recheck: Duration::from_secs(3600) }
    }

    /// A missed wake-up costs this much before the test fails.
    const BOUND: Duration = Duration::from_secs(5);

    /// Takes the lock for `c` the way the VFS does: ask, wait for the turn, ask again.
    fn acquire(q: &WriteQueue, c: ConnId) {
        let deadline = Instant::now() + BOUND;
        while q.try_acquire(c, false, &open) == Turn::Wait {
            assert!(q.wait_turn(c, deadline, &open), "{c:?} was never woken for its turn");
        }
    }

    #[test]
    fn the_next_in_line_is_woken_when_the_head_gives_up() {
        let q = Arc::new(no_recheck());
        let (a, b, c) = (ConnId(1), ConnId(2), ConnId(3));
        assert_eq!(q.try_acquire(a, false, &open), Turn::Go);
        assert_eq!(q.try_acquire(b, false, &open), Turn::Wait);
        assert_eq!(q.try_acquire(c, false, &open), Turn::Wait);
        let waiter = {
            let q = q.clone();
            std::thread::spawn(move || {
                acquire(&q, c);
                q.release(c);
            })
        };
        let deadline = Instant::now() + BOUND;
        while q.lock().asleep == 0 {
            assert!(Instant::now() < deadline, "the waiter never went to sleep");
            std::thread::yield_now();
        }
        // The release wakes b (the head), which gives up (its busy timeout): c must be woken.
        q.release(a);
        q.forget(b);
        waiter.join().expect("waiter");
        assert_eq!(q.lock().timeouts, 0, "c was not woken when b gave up");
        assert_eq!(q.try_acquire(a, false, &open), Turn::Go);
    }

    #[test]
    fn hand_overs_reach_every_waiter() {
        const THREADS: u64 = 6;
        const ROUNDS: usize = 200;
        let q = Arc::new(no_recheck());
        let inside = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let order = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (1..=THREADS)
            .map(|i| {
                let (q, inside, order) = (q.clone(), inside.clone(), order.clone());
                std::thread::spawn(move || {
                    for _ in 0..ROUNDS {
                        acquire(&q, ConnId(i));
                        assert!(!inside.swap(true, std::sync::atomic::Ordering::SeqCst), "two holders");
                        order.lock().expect("order").push(i);
                        std::thread::yield_now();
                        inside.store(false, std::sync::atomic::Ordering::SeqCst);
                        q.release(ConnId(i));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(order.lock().expect("order").len(), THREADS as usize * ROUNDS);
        assert_eq!(q.lock().timeouts, 0, "a waiter was not woken for its turn");
    }

    #[test]
    fn wait_turn_times_out() {
        let q = WriteQueue::default();
        assert_eq!(q.try_acquire(ConnId(1), false, &open), Turn::Go);
        assert_eq!(q.try_acquire(ConnId(2), false, &open), Turn::Wait);
        assert!(!q.wait_turn(ConnId(2), Instant::now() + Duration::from_millis(20), &open));
    }
}
