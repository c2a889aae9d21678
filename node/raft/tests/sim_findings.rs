//! Minimal, deterministic reproductions of bugs the simulator found in the core (see
//! `node/raft/SIM_FINDINGS.md`). Each drives `RawNode`s by hand, without the simulator, so the
//! failing sequence is readable. A finding's test stays here after the fix, as a regression test
//! (an open finding's test is `#[ignore]`d until it is fixed).

use dqlite_raft::{
    Config, Configuration, Entry, EntryKind, Error, Event, HardState, LogIndex, Message, NodeId, RawNode, Role, Server,
    StateRole, Term,
};

/// What a test harness keeps for one server: the core, what is durable, what it applied.
struct Server1 {
    raw: RawNode,
    durable_hard: HardState,
    durable_log: Vec<Entry>,
    applied: Vec<Entry>,
    /// Terms in which this server told its application it was leader (role, event).
    announced: Vec<Term>,
}

impl Server1 {
    fn new(id: u64, boot: &Entry) -> Server1 {
        let raw =
            RawNode::restore(Config::new(NodeId(id)), HardState::default(), None, vec![boot.clone()]).expect("restore");
        Server1 {
            raw,
            durable_hard: HardState::default(),
            durable_log: vec![boot.clone()],
            applied: Vec::new(),
            announced: Vec::new(),
        }
    }

    /// Rebuilds the server from what is durable (a crash: everything else is lost).
    fn restart(&self, id: u64) -> Server1 {
        let raw = RawNode::restore(Config::new(NodeId(id)), self.durable_hard, None, self.durable_log.clone())
            .expect("restore");
        Server1 {
            raw,
            durable_hard: self.durable_hard,
            durable_log: self.durable_log.clone(),
            applied: Vec::new(),
            announced: self.announced.clone(),
        }
    }

    /// Records what the application can see of leadership now.
    fn observe(&mut self) {
        if self.raw.is_leader() || self.raw.role() == StateRole::Leader || self.raw.leader() == Some(self.raw.id()) {
            self.announced.push(self.raw.term());
        }
    }

    /// Handles one Ready completely (persist, then `advance`), returning every message it sends.
    fn handle_ready(&mut self) -> Vec<Message> {
        self.observe();
        let rd = self.raw.ready();
        for e in &rd.events {
            if let Event::RoleChanged { role: StateRole::Leader, term, .. } = e {
                self.announced.push(*term);
            }
        }
        if let Some(hs) = rd.hard_state {
            self.durable_hard = hs;
        }
        if let Some(first) = rd.entries.first() {
            self.durable_log.retain(|e| e.index < first.index);
            self.durable_log.extend(rd.entries.iter().cloned());
        }
        self.applied.extend(rd.committed_entries.iter().cloned());
        self.raw.advance(&rd);
        self.observe();
        let mut out = rd.messages;
        out.extend(rd.persisted_messages);
        out
    }
}

/// Delivers messages back and forth (persisting every Ready) until nothing is left to do.
fn settle(servers: &mut [&mut Server1], mut inflight: Vec<Message>) {
    for _ in 0..1000 {
        for s in servers.iter_mut() {
            while s.raw.has_ready() {
                inflight.extend(s.handle_ready());
            }
        }
        if inflight.is_empty() {
            return;
        }
        for m in std::mem::take(&mut inflight) {
            if let Some(s) = servers.iter_mut().find(|s| s.raw.id() == m.to) {
                s.raw.step(m).expect("step");
            }
        }
    }
    panic!("did not settle");
}

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn payload_at(applied: &[Entry], index: LogIndex) -> Option<Vec<u8>> {
    applied.iter().find(|e| e.index == index).map(|e| e.data.clone())
}

/// F1 (seed 3336 of the simulator): a voter that wins an election with its own vote alone (a
/// single-voter cluster, possibly with standbys) becomes leader and sends AppendEntries of the
/// new term in `Ready::messages`, i.e. before the `HardState` that records the term is durable.
/// If it crashes before the fsync, it restarts in the old term, wins the same term again and
/// appends a *different* entry at the same index and term. The standby that received the first
/// one sees a matching (index, term), keeps it, and applies it: the two state machines diverge.
#[test]
fn f1_self_elected_leader_must_not_send_before_its_term_is_durable() {
    let mut conf = Configuration::with_voters([NodeId(1)]);
    conf.upsert(Server { id: NodeId(2), address: String::new(), role: Role::Standby });
    let boot = RawNode::bootstrap_entry(&conf);
    let mut n1 = Server1::new(1, &boot);
    let mut n2 = Server1::new(2, &boot);

    // n1 elects itself (term 2). Its first Ready holds the new term and the no-op; the
    // application starts the fsync and sends the messages (as the contract allows).
    let before = n1.raw.term();
    while n1.raw.term() == before {
        n1.raw.tick();
    }
    let term = n1.raw.term();
    let rd1 = n1.raw.ready();
    let hs = rd1.hard_state.expect("the new term must be persisted");
    assert_eq!(hs.term, term);
    let mut early: Vec<Message> = rd1.messages.iter().filter(|m| m.term >= term).cloned().collect();
    // The standby answers; a client proposes X; the next Ready goes out while the first
    // fsync is still running (pipelined Readys).
    let mut acks = Vec::new();
    for m in rd1.messages {
        n2.raw.step(m).expect("step");
        while n2.raw.has_ready() {
            acks.extend(n2.handle_ready());
        }
    }
    for m in acks {
        n1.raw.step(m).expect("step");
    }
    // (Refused while n1 is leader-elect, which is also correct.)
    let _ = n1.raw.propose(b"X".to_vec());
    let rd2 = n1.raw.ready();
    early.extend(rd2.messages.iter().filter(|m| m.term >= term).cloned());
    settle(&mut [&mut n2], rd2.messages);

    // n1 crashes before either fsync completes and restarts from its disk (bootstrap only).
    let mut n1 = Server1::new(1, &boot);
    let mut pending = Vec::new();
    while !n1.raw.is_leader() {
        n1.raw.tick();
        while n1.raw.has_ready() {
            pending.extend(n1.handle_ready());
        }
    }
    assert_eq!(n1.raw.term(), term, "restarted in the old term, won the same term again");
    n1.raw.propose(b"Y".to_vec()).expect("propose Y");
    settle(&mut [&mut n1, &mut n2], pending);
    for _ in 0..20 {
        n1.raw.tick(); // heartbeats carry the commit index to the standby
        settle(&mut [&mut n1, &mut n2], Vec::new());
    }

    let at = LogIndex(3);
    assert!(
        early.is_empty(),
        "{} message(s) of term {term:?} sent before the term was durable: {early:?}\n\
         consequence: leader applied {:?} at {at:?}, standby applied {:?}",
        early.len(),
        text(payload_at(&n1.applied, at)),
        text(payload_at(&n2.applied, at)),
    );
    assert_eq!(payload_at(&n1.applied, at), payload_at(&n2.applied, at));
}

/// F2 (seed 103008 of the simulator): a server that elects itself with its own vote alone
/// told its application "you lead term t" in the `Ready` that first carried term t, before that
/// term was durable. Crashing before the fsync, it restarted in term t - 1 and voted for another
/// server in term t, which then led term t too: two servers announced leadership of one term.
/// In the seed, n1 was a spare, leader n3 proposed demoting itself (uncommitted), so in n2's
/// log n2 was the only voter; n3, still allowed to campaign while its demotion is uncommitted,
/// won t13 with the vote of the restarted n2.
///
/// Here: n1 and n2 are voters; entry 2 (uncommitted) demotes n2 to standby, so n1 is a quorum
/// by itself and n2 may still campaign.
#[test]
fn f2_leadership_is_not_announced_before_the_term_is_durable() {
    let voters = Configuration::with_voters([NodeId(1), NodeId(2)]);
    let boot = RawNode::bootstrap_entry(&voters);
    let mut demoted = voters.clone();
    demoted.upsert(Server { id: NodeId(2), address: String::new(), role: Role::Standby });
    let demote = Entry { term: Term(1), index: LogIndex(2), kind: EntryKind::Configuration, data: demoted.encode() };
    let mut n1 = Server1::new(1, &boot);
    let mut n2 = Server1::new(2, &boot);
    for s in [&mut n1, &mut n2] {
        s.durable_log.push(demote.clone());
        s.durable_hard = HardState { term: Term(1), vote: None, commit: LogIndex(1) };
        *s = s.restart(s.raw.id().0);
    }

    // n1 elects itself (term 2) in one step. Its Ready carries the new term; the fsync is
    // still running when n1 crashes.
    let before = n1.raw.term();
    while n1.raw.term() == before {
        n1.raw.tick();
    }
    let term = n1.raw.term();
    n1.observe();
    let rd = n1.raw.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(term));
    for e in &rd.events {
        if let Event::RoleChanged { role: StateRole::Leader, term, .. } = e {
            n1.announced.push(*term);
        }
    }
    assert!(rd.messages.is_empty(), "sent before its term was durable: {:?}", rd.messages);
    assert!(matches!(n1.raw.propose(b"x".to_vec()), Err(Error::NotLeader { .. })));
    assert!(matches!(n1.raw.read_index(b"r".to_vec()), Err(Error::NotLeader { .. })));
    n1.observe();
    let mut n1 = n1.restart(1);
    assert_eq!(n1.raw.term(), before, "restarted in the old term");

    // n2 campaigns for the same term and wins it with n1's vote.
    // (Once n2's no-op commits, so does its demotion, and it hands leadership to n1 in a later
    // term: stop as soon as n2 announces.)
    for _ in 0..1000 {
        if n2.announced.contains(&term) {
            break;
        }
        n2.raw.tick();
        let out = n2.handle_ready();
        settle(&mut [&mut n1, &mut n2], out);
    }
    assert!(
        !n1.announced.contains(&term),
        "n1 announced leadership of {term:?} before it was durable, and n2 leads it too"
    );
    assert!(n2.announced.contains(&term));
}

/// F3 (seed 360 of the simulator, once it wiped disks): a server whose disk was lost came back
/// empty under its old id after the operator had removed it from the configuration. Another
/// server, removed long before and re-added as a spare (so never sent the log since), still had
/// the bootstrap configuration, where both were voters: it asked the empty server for its vote,
/// got it, and led a term without the committed entries. Reusing the id of a wiped server is
/// unsafe even after its removal; the simulator's operator now brings the machine back under a
/// new id. Defence in depth in the core: a server that never held an entry or a snapshot grants
/// no vote or pre-vote.
#[test]
fn f3_a_blank_server_grants_no_vote_to_a_candidate_with_a_stale_configuration() {
    let conf = Configuration::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let boot = RawNode::bootstrap_entry(&conf);
    // n2 holds only the bootstrap entry (stale: the cluster moved on without it).
    let mut n2 = Server1::new(2, &boot);
    // n1 lost its disk and restarted empty under the same id.
    let mut n1 = Server1 {
        raw: RawNode::new(Config::new(NodeId(1))).expect("new"),
        durable_hard: HardState::default(),
        durable_log: Vec::new(),
        applied: Vec::new(),
        announced: Vec::new(),
    };
    let before = n2.raw.term();
    for _ in 0..200 {
        n2.raw.tick();
        let out = n2.handle_ready();
        // Only n1 answers (n3, which has the committed log, is down or partitioned away).
        let to_n1: Vec<Message> = out.into_iter().filter(|m| m.to == NodeId(1)).collect();
        settle(&mut [&mut n1, &mut n2], to_n1);
        assert!(!n2.raw.is_leader(), "n2 won an election with the vote of an empty server");
    }
    assert!(n2.announced.is_empty());
    assert_eq!(n2.raw.term(), before, "pre-votes were refused, so no term was started");
}
