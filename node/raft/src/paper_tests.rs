//! Tests named after the sections of the Raft paper (and Ongaro's thesis) whose rules they check.

use crate::test_harness::{config, Cluster};
use crate::{
    AppendEntries, ConfChange, ConfChangeStatus, Configuration, Entry, EntryKind, Error, Event, HardState, LogIndex,
    Message, MessageBody, NodeId, RawNode, Role, StateRole, Term, VoteRequest,
};

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { term: Term(term), index: LogIndex(index), kind: EntryKind::Command, data: vec![index as u8] }
}

/// A follower with the bootstrap entry plus `entries`, at `term`.
fn follower_with(id: u64, voters: u64, term: u64, entries: &[Entry]) -> RawNode {
    let conf = Configuration::with_voters((1..=voters).map(NodeId));
    let mut log = vec![RawNode::bootstrap_entry(&conf)];
    log.extend_from_slice(entries);
    let hs = HardState { term: Term(term), vote: None, commit: LogIndex(1) };
    RawNode::restore(config(id, 1), hs, None, log).unwrap()
}

// ----- §5.2 leader election ------------------------------------------------------------------

#[test]
fn s5_2_leader_election_elects_one_leader_and_others_follow() {
    let mut c = Cluster::new(3, 1);
    let l = c.wait_leader(200);
    let term = c.nodes[&l].term();
    for (id, n) in &c.nodes {
        assert_eq!(n.term(), term);
        assert_eq!(n.leader(), Some(l), "node {id:?}");
        if *id != l {
            assert_eq!(n.role(), StateRole::Follower);
        }
    }
}

#[test]
fn s5_2_leader_election_timeout_is_randomized_between_one_and_two_timeouts() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..20 {
        let n = RawNode::new(config(1, seed)).unwrap();
        let t = n.randomized_election_ticks();
        assert!((n.election_ticks..2 * n.election_ticks).contains(&t));
        seen.insert(t);
    }
    assert!(seen.len() > 3, "timeouts not randomized: {seen:?}");
}

#[test]
fn s5_2_leader_election_one_vote_per_term() {
    let mut n = follower_with(1, 3, 1, &[]);
    let req = VoteRequest { last_log_index: LogIndex(1), last_log_term: Term(1), transfer: false };
    n.step(msg(2, 1, 2, MessageBody::RequestVote(req))).unwrap();
    n.step(msg(3, 1, 2, MessageBody::RequestVote(req))).unwrap();
    let rd = n.ready();
    assert_eq!(rd.hard_state.unwrap().vote, Some(NodeId(2)));
    // The grant waits for persistence; the rejection does not promise anything.
    assert!(
        matches!(rd.persisted_messages[..], [Message { to: NodeId(2), body: MessageBody::RequestVoteResponse(r), .. }] if r.granted)
    );
    assert!(
        matches!(rd.messages[..], [Message { to: NodeId(3), body: MessageBody::RequestVoteResponse(r), .. }] if !r.granted)
    );
}

#[test]
fn s5_2_leader_election_candidate_steps_down_for_leader_of_same_term() {
    let mut n = follower_with(1, 3, 1, &[]);
    n.campaign(false, false);
    assert_eq!(n.role(), StateRole::Candidate);
    let t = n.term();
    let ae = AppendEntries {
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: vec![],
        leader_commit: LogIndex(1),
    };
    n.step(msg(2, 1, t.0, MessageBody::AppendEntries(ae))).unwrap();
    assert_eq!(n.role(), StateRole::Follower);
    assert_eq!(n.leader(), Some(NodeId(2)));
    assert_eq!(n.term(), t);
}

#[test]
fn s5_2_leader_election_split_vote_resolves_by_retry() {
    // Every seed must converge to exactly one leader.
    for seed in 0..30 {
        let mut c = Cluster::new(5, seed);
        c.wait_leader(400);
    }
}

// ----- §5.3 log replication -------------------------------------------------------------------

#[test]
fn s5_3_log_replication_commits_on_majority_and_applies_everywhere() {
    let mut c = Cluster::new(3, 2);
    c.elect(1);
    for i in 0..10u8 {
        c.propose(1, &[i]);
    }
    c.deliver();
    c.run(3);
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i]).collect();
    for id in 1..=3 {
        assert_eq!(c.fsm(id), &want, "node {id}");
    }
}

#[test]
fn s5_3_log_replication_needs_a_majority_to_commit() {
    let mut c = Cluster::new(3, 3);
    c.elect(1);
    let before = c.node(1).log().committed();
    c.isolate(2);
    c.isolate(3);
    let i = c.propose(1, b"x");
    c.deliver();
    assert!(c.node(1).log().committed() < i);
    assert_eq!(c.node(1).log().committed(), before);
    c.heal();
    c.run(30);
    assert!(c.node(1).log().committed() >= i);
}

#[test]
fn s5_3_log_replication_follower_rejects_mismatch_with_backoff_hint() {
    // Follower log: 1@1, 2@2, 3@2, 4@2. Leader probes at prev 6 -> hint "log ends at 4".
    let mut n = follower_with(1, 3, 5, &[entry(2, 2), entry(3, 2), entry(4, 2)]);
    let ae = AppendEntries {
        prev_log_index: LogIndex(6),
        prev_log_term: Term(5),
        entries: vec![],
        leader_commit: LogIndex(1),
    };
    n.step(msg(2, 1, 5, MessageBody::AppendEntries(ae))).unwrap();
    let rd = n.ready();
    let MessageBody::AppendEntriesResponse(r) = &rd.messages[0].body else { panic!("{rd:?}") };
    assert!(!r.success);
    assert_eq!(r.hint.unwrap().conflict_term, None);
    assert_eq!(r.hint.unwrap().conflict_index, LogIndex(5));
    // Probe at prev 4 with term 4: conflicts with term 2, whose run starts at 2.
    let ae = AppendEntries {
        prev_log_index: LogIndex(4),
        prev_log_term: Term(4),
        entries: vec![],
        leader_commit: LogIndex(1),
    };
    n.step(msg(2, 1, 5, MessageBody::AppendEntries(ae))).unwrap();
    let rd = n.ready();
    let MessageBody::AppendEntriesResponse(r) = &rd.messages[0].body else { panic!() };
    assert_eq!(r.hint.unwrap().conflict_term, Some(Term(2)));
    assert_eq!(r.hint.unwrap().conflict_index, LogIndex(2));
}

#[test]
fn s5_3_log_replication_conflicting_entries_are_overwritten() {
    let mut c = Cluster::new(3, 4);
    c.elect(1);
    // Node 1 appends entries only it holds, then loses leadership.
    c.isolate(1);
    c.propose(1, b"lost-a");
    c.propose(1, b"lost-b");
    c.deliver();
    c.heal();
    c.isolate(1);
    c.elect(2);
    c.propose(2, b"kept");
    c.deliver();
    c.heal();
    c.run(5);
    for id in 1..=3 {
        assert_eq!(c.fsm(id), &vec![b"kept".to_vec()], "node {id}");
        let n = c.node(id);
        assert_eq!(n.log().last_index(), c.nodes[&NodeId(2)].log().last_index());
    }
}

#[test]
fn s5_3_log_replication_pipelines_appends_up_to_the_bound() {
    let mut c = Cluster::new(2, 5);
    c.elect(1);
    c.run(1);
    // Block acknowledgements: the leader keeps sending until its pipeline (4) is full.
    c.drop_if = Some(|m| matches!(m.body, MessageBody::AppendEntriesResponse(_)));
    let mut sent = 0;
    for i in 0..10u8 {
        c.node(1).propose(vec![i]).unwrap();
        let rd = c.node(1).ready();
        sent += rd.messages.iter().filter(|m| matches!(m.body, MessageBody::AppendEntries(_))).count();
        c.node(1).advance(&rd);
    }
    assert_eq!(sent, 4, "in-flight appends must be bounded by max_inflight_appends");
}

// ----- §5.4 safety ----------------------------------------------------------------------------

#[test]
fn s5_4_1_election_restriction_rejects_candidate_with_stale_log() {
    let mut n = follower_with(1, 3, 2, &[entry(2, 2)]);
    // Candidate's last term is lower.
    let req = VoteRequest { last_log_index: LogIndex(5), last_log_term: Term(1), transfer: false };
    n.step(msg(2, 1, 3, MessageBody::RequestVote(req))).unwrap();
    // Candidate's log is shorter in the same last term.
    let req = VoteRequest { last_log_index: LogIndex(1), last_log_term: Term(2), transfer: false };
    n.step(msg(3, 1, 3, MessageBody::RequestVote(req))).unwrap();
    let rd = n.ready();
    assert!(rd.persisted_messages.is_empty());
    assert_eq!(rd.messages.len(), 2);
    for m in &rd.messages {
        assert!(matches!(m.body, MessageBody::RequestVoteResponse(r) if !r.granted));
    }
    assert_eq!(n.hard_state().vote, None);
}

#[test]
fn s5_4_2_commit_only_current_term_entries_by_counting_replicas() {
    // Figure 8: a leader of term 3 replicates an entry of term 2 to a majority; that alone
    // must not commit it.
    let mut leader = follower_with(1, 3, 2, &[entry(2, 2)]);
    leader.campaign(false, false);
    let t = leader.term();
    for p in [2, 3] {
        leader.step(msg(p, 1, t.0, MessageBody::RequestVoteResponse(crate::VoteResponse { granted: true }))).unwrap();
    }
    assert_eq!(leader.role, StateRole::Leader);
    let rd = leader.ready();
    leader.advance(&rd);
    assert!(leader.is_leader());
    // The no-op of term t is at index 3. Follower 2 acknowledges only index 2 (term 2).
    assert_eq!(leader.log().term(LogIndex(3)), Some(t));
    leader
        .step(msg(
            2,
            1,
            t.0,
            MessageBody::AppendEntriesResponse(crate::AppendEntriesResponse {
                success: true,
                index: LogIndex(2),
                hint: None,
            }),
        ))
        .unwrap();
    assert_eq!(leader.log().committed(), LogIndex(1), "an old-term entry was committed by counting replicas");
    leader
        .step(msg(
            2,
            1,
            t.0,
            MessageBody::AppendEntriesResponse(crate::AppendEntriesResponse {
                success: true,
                index: LogIndex(3),
                hint: None,
            }),
        ))
        .unwrap();
    assert_eq!(leader.log().committed(), LogIndex(3), "committing the current-term entry commits the old one too");
}

#[test]
fn s5_4_3_leader_completeness_new_leader_has_committed_entries() {
    let mut c = Cluster::new(5, 6);
    c.elect(1);
    let i = c.propose(1, b"committed");
    c.deliver();
    assert!(c.node(1).log().committed() >= i);
    c.crash(1);
    let l = c.wait_leader(500);
    assert!(c.nodes[&l].log().term(i).is_some());
    c.run(3);
    assert_eq!(c.fsm(l.0), &vec![b"committed".to_vec()]);
}

// ----- §5.5 crashes -----------------------------------------------------------------------------

#[test]
fn s5_5_follower_crash_and_restart_catches_up_from_disk() {
    let mut c = Cluster::new(3, 7);
    c.elect(1);
    c.propose(1, b"a");
    c.deliver();
    c.crash(3);
    c.propose(1, b"b");
    c.deliver();
    c.restart(3);
    c.run(30);
    assert_eq!(c.fsm(3), &vec![b"a".to_vec(), b"b".to_vec()]);
}

#[test]
fn s5_5_restart_keeps_term_and_vote() {
    let mut n = follower_with(1, 3, 1, &[]);
    let req = VoteRequest { last_log_index: LogIndex(1), last_log_term: Term(1), transfer: false };
    n.step(msg(2, 1, 4, MessageBody::RequestVote(req))).unwrap();
    let rd = n.ready();
    let hs = rd.hard_state.unwrap();
    let conf = Configuration::with_voters((1..=3).map(NodeId));
    let mut n = RawNode::restore(config(1, 9), hs, None, vec![RawNode::bootstrap_entry(&conf)]).unwrap();
    assert_eq!(n.term(), Term(4));
    n.step(msg(3, 1, 4, MessageBody::RequestVote(req))).unwrap();
    let rd = n.ready();
    assert!(matches!(rd.messages[0].body, MessageBody::RequestVoteResponse(r) if !r.granted), "voted twice in a term");
}

// ----- §6 cluster membership changes --------------------------------------------------------

#[test]
fn s6_membership_add_voter_is_caught_up_before_the_configuration_is_appended() {
    let mut c = Cluster::new(3, 8);
    c.elect(1);
    for i in 0..20u8 {
        c.propose(1, &[i]);
    }
    c.deliver();
    c.add_blank(4);
    let st = c
        .node(1)
        .propose_conf_change(ConfChange::Add { id: NodeId(4), address: "n4".into(), role: Role::Voter })
        .unwrap();
    assert_eq!(st, ConfChangeStatus::CatchingUp);
    assert!(!c.node(1).configuration().is_voter(NodeId(4)), "voter before catch-up");
    c.process(NodeId(1));
    c.deliver();
    c.run(2);
    assert!(c.node(1).configuration().is_voter(NodeId(4)));
    assert!(c.events[&NodeId(1)].iter().any(|e| matches!(e, Event::ConfChangeAppended { node: NodeId(4), .. })));
    assert!(c.node(4).configuration().is_voter(NodeId(4)));
    assert_eq!(c.fsm(4).len(), 20);
}

#[test]
fn s6_membership_one_change_at_a_time() {
    let mut c = Cluster::new(3, 9);
    c.elect(1);
    c.run(1);
    c.isolate(2);
    c.isolate(3);
    let r =
        c.node(1).propose_conf_change(ConfChange::Add { id: NodeId(4), address: String::new(), role: Role::Standby });
    assert!(matches!(r, Ok(ConfChangeStatus::Appended(_))));
    let r = c.node(1).propose_conf_change(ConfChange::Add { id: NodeId(5), address: String::new(), role: Role::Spare });
    assert_eq!(r, Err(Error::ConfChangeInProgress));
    c.heal();
    c.run(2);
    let r = c.node(1).propose_conf_change(ConfChange::Add { id: NodeId(5), address: String::new(), role: Role::Spare });
    assert!(matches!(r, Ok(ConfChangeStatus::Appended(_))), "{r:?}");
}

#[test]
fn s6_membership_remove_leader_steps_down_after_commit() {
    let mut c = Cluster::new(3, 10);
    c.elect(1);
    c.run(1);
    c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(1) }).unwrap();
    c.process(NodeId(1));
    c.deliver();
    assert!(!c.node(1).is_leader());
    let l = c.wait_leader(400);
    assert_ne!(l, NodeId(1));
    assert_eq!(c.nodes[&l].configuration().voters().collect::<Vec<_>>(), vec![NodeId(2), NodeId(3)]);
    let i = c.propose(l.0, b"after");
    c.deliver();
    assert!(c.nodes[&l].log().committed() >= i);
}

#[test]
fn s6_membership_standby_gets_log_but_no_vote_spare_gets_nothing() {
    let mut c = Cluster::new(3, 11);
    c.elect(1);
    c.run(1);
    c.add_blank(4);
    c.add_blank(5);
    c.node(1)
        .propose_conf_change(ConfChange::Add { id: NodeId(4), address: String::new(), role: Role::Standby })
        .unwrap();
    c.process(NodeId(1));
    c.run(2);
    c.node(1)
        .propose_conf_change(ConfChange::Add { id: NodeId(5), address: String::new(), role: Role::Spare })
        .unwrap();
    c.process(NodeId(1));
    c.run(2);
    c.propose(1, b"x");
    c.run(2);
    assert_eq!(c.fsm(4), &vec![b"x".to_vec()], "standby gets the log");
    assert!(c.fsm(5).is_empty(), "spare gets nothing");
    // With both other voters down, leader + standby are not a quorum.
    c.crash(2);
    c.crash(3);
    let i = c.propose(1, b"y");
    c.run(1);
    assert!(c.node(1).log().committed() < i);
    // And a standby never campaigns.
    c.crash(1);
    c.run(100);
    assert!(c.leaders().is_empty());
}

#[test]
fn s6_membership_demote_voter_and_reject_removing_last_voter() {
    let mut c = Cluster::new(1, 12);
    c.elect(1);
    c.run(1);
    assert_eq!(c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(1) }), Err(Error::NoVoterLeft));
    assert_eq!(
        c.node(1).propose_conf_change(ConfChange::Assign { id: NodeId(1), role: Role::Voter }),
        Err(Error::RoleUnchanged(NodeId(1)))
    );
    assert_eq!(c.node(1).propose_conf_change(ConfChange::Remove { id: NodeId(9) }), Err(Error::NotMember(NodeId(9))));
}

// ----- §7 log compaction ------------------------------------------------------------------------

#[test]
fn s7_log_compaction_lagging_follower_gets_snapshot_in_chunks() {
    let mut c = Cluster::new(3, 13);
    for id in 1..=3 {
        c.node(id).cfg.snapshot_chunk_bytes = 8;
    }
    c.elect(1);
    c.crash(3);
    for i in 0..30u8 {
        c.propose(1, &[i, i]);
    }
    c.deliver();
    c.run(1);
    let meta = c.take_snapshot(1, 0);
    assert_eq!(c.node(1).log().compacted_index(), meta.index);
    c.restart(3);
    c.run(30);
    let want: Vec<Vec<u8>> = (0..30u8).map(|i| vec![i, i]).collect();
    assert_eq!(c.fsm(3), &want);
    assert_eq!(c.node(3).snapshot_meta().map(|m| m.index), Some(meta.index));
    // Several chunks were needed: the state machine encodes to 30 x 6 bytes.
    c.propose(1, b"after");
    c.run(10);
    assert_eq!(c.fsm(3).last().unwrap(), b"after");
}

#[test]
fn s7_log_compaction_snapshot_requires_applied_index() {
    let mut c = Cluster::new(1, 14);
    c.elect(1);
    let applied = c.node(1).log().applied();
    let r = c.node(1).snapshot_taken(applied.next());
    assert!(matches!(r, Err(Error::SnapshotNotApplied { .. })));
    let m = c.node(1).snapshot_taken(applied).unwrap();
    assert_eq!(m.configuration, Configuration::with_voters([NodeId(1)]));
}

#[test]
fn s7_log_compaction_restart_from_snapshot_replays_only_later_entries() {
    let mut c = Cluster::new(3, 15);
    c.elect(1);
    c.propose(1, b"a");
    c.run(2);
    c.take_snapshot(2, 0);
    c.propose(1, b"b");
    c.run(2);
    c.crash(2);
    c.restart(2);
    c.run(3);
    assert_eq!(c.fsm(2), &vec![b"a".to_vec(), b"b".to_vec()]);
}

// ----- §8 client interaction ------------------------------------------------------------------

#[test]
fn s8_client_read_index_confirms_leadership_with_a_heartbeat_quorum() {
    let mut c = Cluster::new(3, 16);
    c.elect(1);
    c.run(1);
    c.isolate(2);
    c.isolate(3);
    c.node(1).read_index(b"r1".to_vec()).unwrap();
    c.process(NodeId(1));
    c.deliver();
    assert!(c.reads.get(&NodeId(1)).is_none_or(|r| r.is_empty()), "read served without a quorum");
    c.heal();
    c.run(2);
    let reads = c.reads[&NodeId(1)].clone();
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].ctx, b"r1");
    assert!(reads[0].index <= c.node(1).log().applied());
}

#[test]
fn s8_client_read_index_waits_for_first_commit_in_term_and_fails_on_step_down() {
    let mut n = follower_with(1, 3, 1, &[entry(2, 1)]);
    n.campaign(false, false);
    let t = n.term();
    n.step(msg(2, 1, t.0, MessageBody::RequestVoteResponse(crate::VoteResponse { granted: true }))).unwrap();
    assert_eq!(n.role, StateRole::Leader);
    assert!(!n.is_leader(), "leader-elect until its no-op (and term) is durable");
    assert_eq!(n.read_index(b"r".to_vec()), Err(Error::NotLeader { leader: None }));
    let rd = n.ready();
    n.advance(&rd);
    assert!(n.is_leader());
    n.read_index(b"r".to_vec()).unwrap();
    let rd = n.ready();
    assert!(
        !rd.messages.iter().any(|m| matches!(m.body, MessageBody::Heartbeat(_))),
        "read round before the no-op committed"
    );
    n.advance(&rd);
    // Leadership lost before anything commits: the read fails.
    n.step(msg(2, 1, t.0 + 1, MessageBody::TimeoutNow)).unwrap();
    assert!(!n.is_leader());
    let rd = n.ready();
    assert!(rd.events.contains(&Event::ReadIndexFailed { ctx: b"r".to_vec() }));
    assert_eq!(n.read_index(vec![]), Err(Error::NotLeader { leader: None }));
}

#[test]
fn s8_client_read_index_parked_until_first_commit_is_then_served() {
    let mut c = Cluster::new(3, 30);
    for n in c.nodes.values_mut() {
        n.election_elapsed = n.election_ticks;
    }
    c.node(1).campaign(false, false);
    c.process(NodeId(1));
    // Deliver only the vote traffic: node 1 leads but has not committed its no-op.
    while let Some(m) = c.queue.pop_front() {
        if matches!(m.body, MessageBody::AppendEntries(_) | MessageBody::Heartbeat(_)) {
            continue;
        }
        let to = m.to;
        c.nodes.get_mut(&to).unwrap().step(m).unwrap();
        c.process(to);
    }
    assert!(c.node(1).is_leader());
    c.node(1).read_index(b"early".to_vec()).unwrap();
    c.process(NodeId(1));
    assert!(c.reads.get(&NodeId(1)).is_none_or(|r| r.is_empty()));
    c.run(30);
    let reads = c.reads[&NodeId(1)].clone();
    assert_eq!(reads.len(), 1);
    assert_eq!(c.node(1).log().term(reads[0].index), Some(c.node(1).term()), "read index is the no-op of the term");
}

#[test]
fn s5_3_log_replication_append_below_the_compaction_point_is_acknowledged() {
    // Follower: snapshot at 5 (term 1), entries 6..=8, all committed.
    let conf = Configuration::with_voters((1..=3).map(NodeId));
    let meta = crate::SnapshotMeta {
        index: LogIndex(5),
        term: Term(1),
        configuration: conf,
        configuration_index: LogIndex(1),
    };
    let hs = HardState { term: Term(1), vote: None, commit: LogIndex(8) };
    let mut n = RawNode::restore(config(1, 1), hs, Some(meta), (6..=8).map(|i| entry(i, 1)).collect()).unwrap();
    let ae = AppendEntries {
        prev_log_index: LogIndex(2),
        prev_log_term: Term(1),
        entries: (3..=9).map(|i| entry(i, 1)).collect(),
        leader_commit: LogIndex(9),
    };
    n.step(msg(2, 1, 1, MessageBody::AppendEntries(ae))).unwrap();
    let rd = n.ready();
    assert!(
        rd.persisted_messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::AppendEntriesResponse(r) if r.success && r.index == LogIndex(9))),
        "{rd:?}"
    );
    assert_eq!(n.log().last_index(), LogIndex(9));
}

#[test]
fn s6_membership_truncated_configuration_entry_is_rolled_back() {
    // Follower holds an uncommitted configuration at 2 (adds node 4); the new leader's log has a
    // command there instead.
    let mut with4 = Configuration::with_voters((1..=3).map(NodeId));
    with4.upsert(crate::Server { id: NodeId(4), address: String::new(), role: Role::Standby });
    let conf_entry = Entry { term: Term(1), index: LogIndex(2), kind: EntryKind::Configuration, data: with4.encode() };
    let mut n = follower_with(1, 3, 1, &[conf_entry]);
    assert_eq!(n.configuration(), &with4);
    let ae = AppendEntries {
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: vec![entry(2, 2)],
        leader_commit: LogIndex(1),
    };
    n.step(msg(2, 1, 2, MessageBody::AppendEntries(ae))).unwrap();
    assert_eq!(n.configuration(), &Configuration::with_voters((1..=3).map(NodeId)));
    assert_eq!(n.configuration_index(), LogIndex(1));
}

#[test]
fn s8_client_barrier_is_committed_and_applied_in_order() {
    let mut c = Cluster::new(3, 17);
    c.elect(1);
    c.propose(1, b"a");
    let b = c.node(1).barrier().unwrap();
    c.process(NodeId(1));
    c.run(2);
    assert!(c.node(2).log().applied() >= b);
    assert_eq!(c.node(2).log().entry(b).map(|e| e.kind), Some(EntryKind::Barrier));
}

#[test]
fn s8_new_leader_appends_a_noop_barrier() {
    let mut c = Cluster::new(3, 18);
    c.elect(1);
    let last = c.node(1).log().last_index();
    let e = c.node(1).log().entry(last).unwrap().clone();
    assert_eq!(e.kind, EntryKind::Barrier);
    assert_eq!(e.term, c.node(1).term());
}

// ----- thesis §9.6 pre-vote, §6.4 check-quorum and leader lease, §3.10 transfer ----------------

#[test]
fn thesis_9_6_prevote_partitioned_node_does_not_raise_its_term() {
    let mut c = Cluster::new(3, 19);
    c.elect(1);
    let t = c.node(1).term();
    c.isolate(3);
    c.run(200);
    assert_eq!(c.node(3).term(), t, "pre-vote must keep an isolated node's term");
    c.heal();
    c.run(5);
    assert_eq!(c.leaders(), vec![NodeId(1)], "rejoining node disrupted the leader");
    assert_eq!(c.node(1).term(), t);
}

#[test]
fn thesis_6_4_check_quorum_leader_steps_down_without_majority() {
    let mut c = Cluster::new(3, 20);
    c.elect(1);
    c.isolate(1);
    let et = c.node(1).election_ticks;
    for _ in 0..et + 1 {
        c.tick_all();
        c.deliver();
    }
    assert_eq!(c.node(1).role(), StateRole::Follower);
    c.heal();
    let l = c.wait_leader(400);
    c.propose(l.0, b"ok");
    c.run(3);
    assert_eq!(c.fsm(1), &vec![b"ok".to_vec()]);
}

#[test]
fn thesis_6_4_leader_lease_followers_ignore_votes_while_leader_is_alive() {
    let mut c = Cluster::new(3, 21);
    c.elect(1);
    let t = c.node(1).term();
    // Node 3 forces an election (as if its timer fired): nobody in lease grants it.
    c.node(3).campaign(false, false);
    c.process(NodeId(3));
    c.deliver();
    assert_eq!(c.leaders(), vec![NodeId(1)]);
    assert_eq!(c.node(2).term(), t, "a follower in lease must not adopt the candidate's term");
}

#[test]
fn thesis_3_10_leadership_transfer_to_chosen_and_to_best_voter() {
    let mut c = Cluster::new(3, 22);
    c.elect(1);
    c.propose(1, b"a");
    c.run(1);
    assert_eq!(c.node(1).transfer_leadership(Some(NodeId(1))), Err(Error::InvalidTransferTarget(NodeId(1))));
    c.node(1).transfer_leadership(Some(NodeId(3))).unwrap();
    assert_eq!(c.node(1).propose(vec![]), Err(Error::TransferInProgress));
    c.process(NodeId(1));
    c.deliver();
    assert_eq!(c.leaders(), vec![NodeId(3)]);
    let target = c.node(3).transfer_leadership(None).unwrap();
    c.process(NodeId(3));
    c.deliver();
    assert_eq!(c.leaders(), vec![target]);
}

#[test]
fn thesis_3_10_leadership_transfer_aborts_after_election_timeout() {
    let mut c = Cluster::new(3, 23);
    c.elect(1);
    c.run(1);
    c.isolate(3);
    c.node(1).transfer_leadership(Some(NodeId(3))).unwrap();
    let et = c.node(1).election_ticks;
    for _ in 0..et {
        c.tick_all();
        c.deliver();
    }
    assert!(c.node(1).is_leader());
    assert!(c.events[&NodeId(1)].contains(&Event::TransferAborted { target: NodeId(3) }));
    c.propose(1, b"again");
}

// ----- Ready contract --------------------------------------------------------------------------

#[test]
fn ready_contract_acks_wait_for_persistence_and_unpersisted_entries_are_lost_on_crash() {
    let mut c = Cluster::new(3, 24);
    c.elect(1);
    c.run(1);
    c.node(1).propose(b"x".to_vec()).unwrap();
    let rd = c.node(1).ready();
    assert!(
        rd.messages.iter().any(|m| matches!(m.body, MessageBody::AppendEntries(_))),
        "leader appends go out before its fsync"
    );
    let ae = rd.messages[0].clone();
    c.node(1).advance(&rd);
    c.node(2).step(ae).unwrap();
    let rd2 = c.node(2).ready();
    assert!(rd2.messages.is_empty());
    assert!(rd2
        .persisted_messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::AppendEntriesResponse(r) if r.success)));
    assert_eq!(rd2.entries.len(), 1);
    // Crash before persisting: the entry is gone after restart.
    c.crash(2);
    c.restart(2);
    assert!(c.node(2).log().last_index() < rd2.entries[0].index);
}

#[test]
fn ready_contract_self_elected_leader_sends_nothing_before_its_term_is_durable() {
    // A lone voter with a standby elects itself in the Ready that first carries its new term.
    // Were its appends sent before that Ready is durable, a crash could make it win the same
    // term again and write different entries under the same (index, term).
    let mut conf = Configuration::with_voters([NodeId(1)]);
    conf.upsert(crate::Server { id: NodeId(2), address: String::new(), role: Role::Standby });
    let mut n =
        RawNode::restore(config(1, 2), HardState::default(), None, vec![RawNode::bootstrap_entry(&conf)]).unwrap();
    while n.role != StateRole::Leader {
        n.tick();
    }
    assert!(!n.is_leader() && n.role() == StateRole::Candidate && n.leader().is_none(), "leader-elect");
    let rd = n.ready();
    assert!(rd.hard_state.is_some());
    assert!(rd.messages.is_empty(), "sent before the term is durable: {:?}", rd.messages);
    assert!(rd.persisted_messages.iter().any(|m| matches!(m.body, MessageBody::AppendEntries(_))));
    assert!(!rd.events.iter().any(|e| matches!(e, crate::Event::RoleChanged { role: StateRole::Leader, .. })));
    assert!(matches!(n.propose(b"x".to_vec()), Err(Error::NotLeader { leader: None })));
    n.tick();
    let rd2 = n.ready();
    assert!(rd2.messages.is_empty());
    n.advance(&rd);
    // Once the no-op (and with it the term) is durable, it is leader and says so.
    assert!(n.is_leader() && n.leader() == Some(NodeId(1)));
    n.propose(b"y".to_vec()).unwrap();
    n.advance(&rd2);
    let rd2b = n.ready();
    assert!(rd2b.events.iter().any(|e| matches!(e, crate::Event::RoleChanged { role: StateRole::Leader, .. })));
    n.advance(&rd2b);
    n.tick();
    n.tick();
    let rd3 = n.ready();
    assert!(rd3.messages.iter().any(|m| matches!(m.body, MessageBody::Heartbeat(_))), "{rd3:?}");
}

#[test]
fn step_rejects_misaddressed_messages() {
    let mut n = follower_with(1, 3, 1, &[]);
    assert!(matches!(n.step(msg(2, 3, 1, MessageBody::TimeoutNow)), Err(Error::WrongRecipient { .. })));
    assert_eq!(n.step(msg(0, 1, 1, MessageBody::TimeoutNow)), Err(Error::InvalidSender));
    let bad = vec![entry(3, 1)];
    let conf = Configuration::with_voters([NodeId(1)]);
    let r = RawNode::restore(
        config(1, 0),
        HardState::default(),
        None,
        [vec![RawNode::bootstrap_entry(&conf)], bad].concat(),
    );
    assert!(matches!(r, Err(Error::InvalidRestore(_))));
}

#[test]
fn s6_membership_voter_demoted_by_uncommitted_change_may_still_campaign() {
    // Log: 1 = {n1, n2 voters}; 2 = n1 demoted to standby. If entry 2 is uncommitted, n1 may be
    // the only holder of it and must be able to win to commit it; once committed it must not.
    let conf = Configuration::with_voters([NodeId(1), NodeId(2)]);
    let mut demoted = conf.clone();
    demoted.upsert(crate::Server { id: NodeId(1), address: String::new(), role: Role::Standby });
    let e2 = Entry { term: Term(1), index: LogIndex(2), kind: EntryKind::Configuration, data: demoted.encode() };
    for (commit, may) in [(1, true), (2, false)] {
        let hs = HardState { term: Term(1), vote: None, commit: LogIndex(commit) };
        let mut n =
            RawNode::restore(config(1, 3), hs, None, vec![RawNode::bootstrap_entry(&conf), e2.clone()]).unwrap();
        for _ in 0..2 * n.election_ticks {
            n.tick();
        }
        assert_eq!(n.role() == StateRole::PreCandidate, may, "commit {commit}");
    }
}

#[test]
fn fig2_append_rule_5_follower_commit_stops_at_the_last_entry_the_leader_covered() {
    // Follower n2 holds 2..=5 of term 1 (a stale suffix from an old leader: entries the new
    // leader of term 2 may not have). The leader, whose commit index is 5 (its own, different
    // entries), probes with an empty append at prev = 2: it vouches only for 1..=2.
    let mut n = follower_with(2, 3, 2, &[entry(2, 1), entry(3, 1), entry(4, 1), entry(5, 1)]);
    let ae = AppendEntries {
        prev_log_index: LogIndex(2),
        prev_log_term: Term(1),
        entries: vec![],
        leader_commit: LogIndex(5),
    };
    n.step(msg(1, 2, 2, MessageBody::AppendEntries(ae))).unwrap();
    assert_eq!(n.log().committed(), LogIndex(2), "commitIndex = min(leaderCommit, index of last new entry)");
    // With one new entry the bound is prev + 1 (the entry conflicts and replaces 3@1).
    let ae = AppendEntries {
        prev_log_index: LogIndex(2),
        prev_log_term: Term(1),
        entries: vec![entry(3, 2)],
        leader_commit: LogIndex(5),
    };
    n.step(msg(1, 2, 2, MessageBody::AppendEntries(ae))).unwrap();
    assert_eq!(n.log().committed(), LogIndex(3));
    assert_eq!(n.log().last_index(), LogIndex(3), "the stale suffix was truncated");
    // A heartbeat carries only what the leader knows matches.
    let hb = crate::Heartbeat { commit: LogIndex(3), read_seq: 0, leader_commit: LogIndex(5) };
    n.step(msg(1, 2, 2, MessageBody::Heartbeat(hb))).unwrap();
    assert_eq!(n.log().committed(), LogIndex(3));
    // The leader's own commit index it carries beside that is never committed by.
    let hb = crate::Heartbeat { commit: LogIndex(2), read_seq: 0, leader_commit: LogIndex(9) };
    n.step(msg(1, 2, 2, MessageBody::Heartbeat(hb))).unwrap();
    assert_eq!(n.log().committed(), LogIndex(3));
}
