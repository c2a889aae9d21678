//! Test support: an in-memory "Raft" log shared by several db-layer nodes.
//!
//! Proposals from the leader go to one log; each node has an apply thread that applies entries
//! up to the commit index to its own `Databases` in order. A test can hold the commit index back
//! (replication held), move leadership, and run closures on a node's apply thread.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dqlite_node::db::{conn::DbHandle, Databases, DbConfig};
use dqlite_node::raft::{Entry, EntryKind, LogIndex, NodeId, StateRole, Term};
use dqlite_node::replication::{ApplyError, ProposeError, Proposed, Replicator, StateMachine};
use dqlite_wire::Value;

type Job = Box<dyn FnOnce(&mut Databases) + Send>;

#[derive(Default)]
pub struct LogState {
    pub entries: Vec<Entry>,
    pub commit: u64,
    pub hold: bool,
    pub term: u64,
    pub leader: Option<usize>,
    pub applied: Vec<u64>,
    pub jobs: Vec<VecDeque<Job>>,
    pub roles: Vec<Option<(StateRole, Term)>>,
    pub stop: bool,
    pub errors: Vec<(usize, String)>,
    pub applied_by_index: Vec<u64>,
    /// Proposals fail with `ProposeError::DiskFull` (the log's disk is full).
    pub disk_full: bool,
}

pub struct Shared {
    pub st: Mutex<LogState>,
    pub cv: Condvar,
}

pub struct NodeReplicator {
    pub shared: Arc<Shared>,
    pub id: usize,
}

impl Replicator for NodeReplicator {
    fn propose(&self, data: Vec<u8>) -> Result<Proposed, ProposeError> {
        let mut st = self.shared.st.lock().unwrap();
        if st.leader != Some(self.id) {
            return Err(ProposeError::NotLeader { leader: st.leader.map(|l| NodeId(l as u64 + 1)) });
        }
        if st.disk_full {
            return Err(ProposeError::DiskFull { reason: "no space left on device (test)".into() });
        }
        let index = LogIndex(st.entries.len() as u64 + 1);
        let term = Term(st.term);
        st.entries.push(Entry { term, index, kind: EntryKind::Command, data });
        if !st.hold {
            st.commit = st.entries.len() as u64;
        }
        self.shared.cv.notify_all();
        Ok(Proposed { index, term })
    }
}

pub struct Cluster {
    pub shared: Arc<Shared>,
    pub dirs: Vec<tempfile::TempDir>,
    pub handles: Vec<DbHandle>,
    threads: Vec<Option<JoinHandle<()>>>,
    pub config: DbConfig,
}

/// A replicator for a state machine that only applies entries: it never leads.
pub struct NoLog;

impl Replicator for NoLog {
    fn propose(&self, _: Vec<u8>) -> Result<Proposed, ProposeError> {
        Err(ProposeError::NotLeader { leader: None })
    }
}

pub fn config() -> DbConfig {
    let mut c = DbConfig::default();
    c.commit_timeout = Duration::from_secs(10);
    c
}

fn node_loop(shared: Arc<Shared>, i: usize, mut sm: Databases) {
    let mut cursor = sm.applied_index().0;
    loop {
        let mut st = shared.st.lock().unwrap();
        loop {
            if st.stop {
                return;
            }
            if !st.jobs[i].is_empty()
                || st.roles[i].is_some()
                || (cursor < st.commit && st.errors.iter().all(|(n, _)| *n != i))
            {
                break;
            }
            st = shared.cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
        }
        if let Some((role, term)) = st.roles[i].take() {
            let leader = st.leader.map(|l| NodeId(l as u64 + 1));
            drop(st);
            sm.role_changed(role, term, leader);
            continue;
        }
        if let Some(job) = st.jobs[i].pop_front() {
            drop(st);
            job(&mut sm);
            shared.cv.notify_all();
            continue;
        }
        let e = st.entries[cursor as usize].clone();
        drop(st);
        let r: Result<(), ApplyError> = sm.apply(&e);
        let mut st = shared.st.lock().unwrap();
        match r {
            Ok(()) => {
                cursor += 1;
                st.applied[i] = cursor;
            }
            Err(err) => {
                eprintln!("node {i}: apply error: {err}");
                st.errors.push((i, err.to_string()))
            }
        }
        shared.cv.notify_all();
    }
}

impl Cluster {
    pub fn new(n: usize) -> Cluster {
        Self::with_config(n, config())
    }

    pub fn with_config(n: usize, config: DbConfig) -> Cluster {
        let shared = Arc::new(Shared { st: Mutex::new(LogState::default()), cv: Condvar::new() });
        {
            let mut st = shared.st.lock().unwrap();
            st.term = 1;
            st.leader = Some(0);
            st.applied = vec![0; n];
            st.jobs = (0..n).map(|_| VecDeque::new()).collect();
            st.roles =
                (0..n).map(|i| Some((if i == 0 { StateRole::Leader } else { StateRole::Follower }, Term(1)))).collect();
        }
        let mut c = Cluster { shared, dirs: Vec::new(), handles: Vec::new(), threads: Vec::new(), config };
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            c.dirs.push(dir);
            c.threads.push(None);
            let h = c.start_node(i);
            c.handles.push(h);
        }
        c
    }

    pub fn dir(&self, i: usize) -> PathBuf {
        self.dirs[i].path().to_path_buf()
    }

    fn start_node(&mut self, i: usize) -> DbHandle {
        self.try_start_node(i).expect("open node")
    }

    /// Starts node `i` from its files; the open error if it refuses.
    pub fn try_start_node(&mut self, i: usize) -> Result<DbHandle, dqlite_node::db::DbError> {
        let rep = Arc::new(NodeReplicator { shared: self.shared.clone(), id: i });
        let mut sm = Databases::open(self.dirs[i].path(), rep, self.config.clone())?;
        let handle = sm.handle();
        let (role, term, leader) = {
            let mut st = self.shared.st.lock().unwrap();
            st.applied[i] = sm.applied_index().0;
            let role = if st.leader == Some(i) { StateRole::Leader } else { StateRole::Follower };
            st.roles[i] = None;
            (role, Term(st.term), st.leader.map(|l| NodeId(l as u64 + 1)))
        };
        // Before the handle is used: a write right after the start must find the node leading.
        sm.role_changed(role, term, leader);
        let shared = self.shared.clone();
        self.threads[i] = Some(std::thread::spawn(move || node_loop(shared, i, sm)));
        Ok(handle)
    }

    /// Runs `f` on node `i`'s apply thread and returns its result.
    pub fn on_sm<R: Send + 'static>(&self, i: usize, f: impl FnOnce(&mut Databases) -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut st = self.shared.st.lock().unwrap();
            st.jobs[i].push_back(Box::new(move |sm| {
                let _ = tx.send(f(sm));
            }));
        }
        self.shared.cv.notify_all();
        rx.recv_timeout(Duration::from_secs(60)).expect("job ran")
    }

    pub fn hold(&self, hold: bool) {
        let mut st = self.shared.st.lock().unwrap();
        st.hold = hold;
        if !hold {
            st.commit = st.entries.len() as u64;
        }
        self.shared.cv.notify_all();
    }

    /// Drops the uncommitted tail of the log (a new leader overwrites it).
    pub fn truncate_uncommitted(&self) {
        let mut st = self.shared.st.lock().unwrap();
        let c = st.commit as usize;
        st.entries.truncate(c);
        self.shared.cv.notify_all();
    }

    pub fn last_index(&self) -> u64 {
        self.shared.st.lock().unwrap().entries.len() as u64
    }

    /// A connection to `db` on node 0 (the leader) after `CREATE TABLE t(a)` there, applied on
    /// every node.
    pub fn open_with_table_t(&self, db: &str) -> dqlite_node::db::conn::Connection {
        let conn = self.handles[0].open(db).unwrap();
        conn.blocking_exec_sql("CREATE TABLE t(a)", vec![]).unwrap();
        self.wait_all_applied();
        conn
    }

    /// Waits until every node applied everything committed.
    pub fn wait_all_applied(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = self.shared.st.lock().unwrap();
        loop {
            assert!(st.errors.is_empty(), "apply errors: {:?}", st.errors);
            let c = st.commit;
            if st.applied.iter().all(|a| *a >= c) {
                return;
            }
            assert!(Instant::now() < deadline, "nodes did not catch up: {:?} < {c}", st.applied);
            st = self.shared.cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
        }
    }

    /// Waits until node `i` reported an apply error; returns it.
    pub fn wait_error(&self, i: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut st = self.shared.st.lock().unwrap();
        loop {
            if let Some((_, e)) = st.errors.iter().find(|(n, _)| *n == i) {
                return e.clone();
            }
            assert!(Instant::now() < deadline, "no apply error on node {i}");
            st = self.shared.cv.wait_timeout(st, Duration::from_millis(50)).unwrap().0;
        }
    }

    /// Makes node `leader` the leader of a new term (others follow).
    pub fn elect(&self, leader: Option<usize>) {
        let mut st = self.shared.st.lock().unwrap();
        st.term += 1;
        st.leader = leader;
        let term = Term(st.term);
        for i in 0..st.roles.len() {
            st.roles[i] = Some((if Some(i) == leader { StateRole::Leader } else { StateRole::Follower }, term));
        }
        self.shared.cv.notify_all();
    }

    /// Stops node `i`'s apply thread (its `Databases` is dropped: a clean stop of the process
    /// state; files stay as they are).
    pub fn stop_node(&mut self, i: usize) {
        // Stop all threads, then restart the others.
        {
            self.shared.st.lock().unwrap().stop = true;
            self.shared.cv.notify_all();
        }
        for t in self.threads.iter_mut() {
            if let Some(t) = t.take() {
                t.join().unwrap();
            }
        }
        self.shared.st.lock().unwrap().stop = false;
        let _ = i;
    }

    /// Restarts every stopped node from its files.
    pub fn restart_all(&mut self) {
        for i in 0..self.dirs.len() {
            if self.threads[i].is_none() {
                self.handles[i] = self.start_node(i);
            }
        }
    }

    /// Restarts every stopped node; a node that refuses to start must name a file of its data
    /// directory, and is then rebuilt from an empty directory (replaying the whole log).
    pub fn restart_all_or_rebuild(&mut self) -> usize {
        let mut rebuilt = 0;
        for i in 0..self.dirs.len() {
            if self.threads[i].is_none() {
                match self.try_start_node(i) {
                    Ok(h) => self.handles[i] = h,
                    Err(e) => {
                        let dir = self.dir(i).join("db").canonicalize().unwrap();
                        assert!(e.to_string().contains(dir.to_str().unwrap()), "refusal names no file: {e}");
                        println!("node {i} refused to start: {e}");
                        std::fs::remove_dir_all(&dir).unwrap();
                        self.handles[i] = self.start_node(i);
                        rebuilt += 1;
                    }
                }
            }
        }
        rebuilt
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        {
            let mut st = self.shared.st.lock().unwrap();
            st.stop = true;
        }
        self.shared.cv.notify_all();
        for t in self.threads.iter_mut() {
            if let Some(t) = t.take() {
                let _ = t.join();
            }
        }
    }
}

/// Like [`dump`], but an error (e.g. the connection was replaced by a snapshot install while
/// it read) is returned instead of panicking.
pub fn try_dump(h: &DbHandle, db: &str) -> Result<String, String> {
    let c = h.open(db).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let q = |sql: &str| c.blocking_query_sql(sql, vec![]).and_then(|r| r.blocking_collect()).map_err(|e| e.to_string());
    let schema = q("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name")?;
    for row in &schema {
        out.push_str(&format!("{row:?}\n"));
        if let (Value::Text(t), Value::Text(name)) = (&row[0], &row[1]) {
            if t == "table" {
                for r in q(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))? {
                    out.push_str(&format!("{r:?}\n"));
                }
            }
        }
    }
    Ok(out)
}

/// Every row of every table plus the schema, as one string (a logical dump).
pub fn dump(h: &DbHandle, db: &str) -> String {
    let c = h.open(db).unwrap();
    let mut out = String::new();
    let schema = c
        .blocking_query_sql("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name", vec![])
        .unwrap()
        .blocking_collect()
        .unwrap();
    for row in &schema {
        out.push_str(&format!("{row:?}\n"));
        if let (Value::Text(t), Value::Text(name)) = (&row[0], &row[1]) {
            if t == "table" {
                let rows = c
                    .blocking_query_sql(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"), vec![])
                    .unwrap()
                    .blocking_collect()
                    .unwrap();
                for r in rows {
                    out.push_str(&format!("{r:?}\n"));
                }
            }
        }
    }
    out
}

pub fn integrity_ok(h: &DbHandle, db: &str) {
    let c = h.open(db).unwrap();
    let rows = c.blocking_query_sql("PRAGMA integrity_check", vec![]).unwrap().blocking_collect().unwrap();
    assert_eq!(rows, vec![vec![Value::Text("ok".into())]]);
}

/// Polls `f` (every 2 ms) until it is true; panics naming `what` after `bound`.
pub fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {bound:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub fn count(c: &dqlite_node::db::conn::Connection, sql: &str) -> i64 {
    match c.blocking_query_sql(sql, vec![]).unwrap().blocking_collect().unwrap()[0][0] {
        Value::Integer(n) => n,
        ref v => panic!("not an integer: {v:?}"),
    }
}

/// Runs `sql` on a new connection to node 0's `db` on another thread; the answer comes on the
/// returned channel.
pub fn write_in_background(
    c: &Cluster,
    db: &str,
    sql: &'static str,
) -> std::sync::mpsc::Receiver<Result<(), dqlite_node::db::DbError>> {
    let conn = c.handles[0].open(db).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(conn.blocking_exec_sql(sql, vec![]).map(|_| ()));
    });
    rx
}
