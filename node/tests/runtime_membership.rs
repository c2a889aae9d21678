//! Membership changes and leadership transfer through the handle.

mod runtime_common;

use dqlite_node::raft::{NodeId, Role, StateRole};
use dqlite_node::runtime::harness::{address_of, wait_until};
use dqlite_node::runtime::RuntimeError;
use runtime_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_standby_promote_remove_and_transfer() {
    let (mut c, kv) = kv_cluster(3, 51, 0, |_| {}).await;
    let leader = c.wait_for_leader(WAIT).await.unwrap();
    for i in 0..10 {
        c.propose(format!("k{i}=1").into_bytes(), WAIT).await.unwrap();
    }
    // A blank node waits to be added; the leader adds it as a standby: it gets the log.
    c.launch_blank(NodeId(4)).await.unwrap();
    assert!(c.handle(NodeId(4)).unwrap().configuration().servers().is_empty());
    let h = c.handle(leader).unwrap().clone();
    h.add(NodeId(4), address_of(NodeId(4)), Role::Standby).await.expect("add standby");
    assert_eq!(h.configuration().role(NodeId(4)), Some(Role::Standby));
    let (_, p) = c.propose(b"after-add=1".to_vec(), WAIT).await.unwrap();
    let all = [NodeId(1), NodeId(2), NodeId(3), NodeId(4)];
    wait_applied(&kv, &all, p.index.0).await;
    assert_converged(&kv, &all).await;
    let four = c.handle(NodeId(4)).unwrap().clone();
    wait_until(WAIT, || async { (four.configuration().role(NodeId(4)) == Some(Role::Standby)).then_some(()) })
        .await
        .expect("node 4 learns the configuration");
    assert_eq!(four.leader().map(|l| l.0), Some(leader));
    // Errors from the core come back as such.
    assert!(matches!(h.add(NodeId(4), "x", Role::Voter).await, Err(RuntimeError::Raft(_))));
    let follower = c.ids().into_iter().find(|i| *i != leader && *i != NodeId(4)).unwrap();
    assert!(matches!(
        c.handle(follower).unwrap().remove(NodeId(4)).await,
        Err(RuntimeError::NotLeader { leader: Some(l) }) if l == leader
    ));
    // Promote to voter, then remove another voter.
    h.assign(NodeId(4), Role::Voter).await.expect("promote");
    assert_eq!(h.configuration().voter_count(), 4);
    h.remove(follower).await.expect("remove");
    assert!(h.configuration().get(follower).is_none());
    // Transfer leadership to node 4.
    let new = h.transfer(Some(NodeId(4))).await.expect("transfer");
    assert_eq!(new, NodeId(4));
    wait_until(WAIT, || async { (four.role().role == StateRole::Leader).then_some(()) }).await.expect("4 leads");
    let p = four.propose_async(b"on-4=1".to_vec()).await.expect("write on the new leader");
    let members: Vec<NodeId> = all.iter().copied().filter(|i| *i != follower).collect();
    wait_applied(&kv, &members, p.index.0).await;
    assert_converged(&kv, &members).await;
    c.shutdown_all().await;
}
