//! The TCP peer transport between real sockets on 127.0.0.1: delivery, order, handshake
//! refusals, reconnect after a peer restarts, drop-and-count on a full queue, frame limits.

use std::time::{Duration, Instant};

use dqlite_node::raft::{AppendEntries, Entry, EntryKind, Heartbeat, LogIndex, Message, MessageBody, NodeId, Term};
use dqlite_node::replication::Transport;
use dqlite_node::transport::frame::{Hello, HelloReply, HelloStatus, FORMAT_VERSION, HELLO_REPLY_LEN, PEER_MAGIC};
use dqlite_node::transport::{TcpTransport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn heartbeat(from: u64, to: u64, seq: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), read_seq: seq, leader_commit: LogIndex(0) }),
    }
}

struct Node {
    transport: TcpTransport,
    inbox: mpsc::Receiver<Message>,
    address: String,
    server: tokio::task::JoinHandle<()>,
}

async fn node(id: u64, cluster: u64, listener: Option<TcpListener>) -> Node {
    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let address = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel(1024);
    let mut cfg = TransportConfig::new(NodeId(id));
    cfg.cluster_id = cluster;
    cfg.advertise = address.clone();
    cfg.backoff_min = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(200);
    let transport = TcpTransport::new(cfg, tx, tokio::runtime::Handle::current());
    let server = tokio::spawn(transport.clone().serve_listener(listener));
    Node { transport, inbox: rx, address, server }
}

async fn recv(inbox: &mut mpsc::Receiver<Message>) -> Message {
    tokio::time::timeout(WAIT, inbox.recv()).await.expect("message within the bound").expect("inbox open")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_flow_both_ways_in_order() {
    let mut a = node(1, 7, None).await;
    let mut b = node(2, 7, None).await;
    let peers = vec![(NodeId(1), a.address.clone()), (NodeId(2), b.address.clone())];
    a.transport.set_peers(&peers);
    b.transport.set_peers(&peers);
    for seq in 0..500 {
        a.transport.send(heartbeat(1, 2, seq));
    }
    for seq in 0..500 {
        let m = recv(&mut b.inbox).await;
        assert_eq!(m, heartbeat(1, 2, seq), "in order, unchanged");
    }
    b.transport.send(heartbeat(2, 1, 99));
    assert_eq!(recv(&mut a.inbox).await, heartbeat(2, 1, 99));
    // A message to a node without an address is dropped and counted.
    a.transport.send(heartbeat(1, 3, 0));
    assert_eq!(a.transport.stats().dropped_unknown_peer, 1);
    // One outbound connection carried all 500 (coalesced writes, no reconnects).
    assert_eq!(a.transport.stats().connects, 1);
    assert_eq!(b.transport.stats().received, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_id_is_adopted_and_foreign_nodes_are_refused() {
    let mut a = node(1, 7, None).await;
    let mut joining = node(2, 0, None).await; // knows no cluster yet
    let foreign = node(3, 9, None).await;
    a.transport.set_peers(&[(NodeId(2), joining.address.clone())]);
    a.transport.send(heartbeat(1, 2, 1));
    assert_eq!(recv(&mut joining.inbox).await, heartbeat(1, 2, 1));
    assert_eq!(joining.transport.cluster_id(), 7, "adopted from the first peer");

    // A node of cluster 9 cannot talk to cluster 7.
    foreign.transport.set_peers(&[(NodeId(1), a.address.clone())]);
    foreign.transport.send(heartbeat(3, 1, 1));
    wait_for("the refusal", || a.transport.stats().refused >= 1).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), a.inbox.recv()).await.is_err(), "nothing delivered");

    // A stray connection that thinks it talks to node 5 is refused too.
    let mut s = TcpStream::connect(&a.address).await.unwrap();
    let hello = Hello {
        format_version: FORMAT_VERSION,
        cluster_id: 7,
        from: NodeId(4),
        to: NodeId(5),
        max_frame_bytes: 0,
        address: String::new(),
    };
    s.write_all(&PEER_MAGIC.to_le_bytes()).await.unwrap();
    s.write_all(&hello.encode()).await.unwrap();
    let mut reply = [0u8; HELLO_REPLY_LEN];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(HelloReply::decode(&reply).unwrap().status, HelloStatus::WrongNode);
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0, "closed after the refusal");

    // A future format version is refused with our version in the reply.
    let mut s = TcpStream::connect(&a.address).await.unwrap();
    let hello = Hello {
        format_version: 99,
        cluster_id: 7,
        from: NodeId(4),
        to: NodeId(1),
        max_frame_bytes: 0,
        address: String::new(),
    };
    s.write_all(&PEER_MAGIC.to_le_bytes()).await.unwrap();
    s.write_all(&hello.encode()).await.unwrap();
    s.read_exact(&mut reply).await.unwrap();
    let reply = HelloReply::decode(&reply).unwrap();
    assert_eq!((reply.status, reply.format_version), (HelloStatus::UnsupportedVersion, FORMAT_VERSION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_peer_restarts() {
    let a = node(1, 7, None).await;
    // Reserve b's address, start b later (the peer is down at first).
    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = probe.local_addr().unwrap();
    drop(probe);
    a.transport.set_peers(&[(NodeId(2), b_addr.to_string())]);
    a.transport.send(heartbeat(1, 2, 0));
    wait_for("failed connection attempts", || a.transport.stats().connect_failures >= 2).await;

    let mut b = node(2, 7, Some(TcpListener::bind(b_addr).await.unwrap())).await;
    // Keep sending until one arrives (earlier ones were dropped while b was down).
    let deadline = Instant::now() + WAIT;
    let mut seq = 1;
    let got = loop {
        a.transport.send(heartbeat(1, 2, seq));
        seq += 1;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), b.inbox.recv()).await {
            break m;
        }
        assert!(Instant::now() < deadline, "never reconnected");
    };
    assert!(matches!(got.body, MessageBody::Heartbeat(_)));

    // Restart b: stop its server (closes the listener and its inbound connection).
    b.server.abort();
    let _ = b.server.await;
    drop(b.inbox);
    let connects_before = a.transport.stats().connects;
    let mut b2 = node(2, 7, Some(bind_retry(b_addr).await)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        a.transport.send(heartbeat(1, 2, seq));
        seq += 1;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), b2.inbox.recv()).await {
            break;
        }
        assert!(Instant::now() < deadline, "never reconnected after the restart");
    }
    assert!(a.transport.stats().connects > connects_before, "a new connection was made");
}

async fn bind_retry(addr: std::net::SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn big_append(from: u64, to: u64, bytes: usize) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::AppendEntries(AppendEntries {
            prev_log_index: LogIndex(0),
            prev_log_term: Term(0),
            entries: vec![Entry {
                term: Term(1),
                index: LogIndex(1),
                kind: EntryKind::Command,
                data: vec![0x5a; bytes],
            }],
            leader_commit: LogIndex(0),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_and_counts_without_blocking() {
    // A peer that completes the handshake, then never reads: the socket buffers fill, the
    // writer blocks, the bounded queue fills, and send() keeps returning at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stalled = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 48];
        s.read_exact(&mut first).await.unwrap();
        let reply = HelloReply {
            format_version: FORMAT_VERSION,
            status: HelloStatus::Accepted,
            cluster_id: 7,
            node_id: NodeId(2),
        };
        s.write_all(&reply.encode()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(s);
    });
    let (tx, _rx) = mpsc::channel(4);
    let mut cfg = TransportConfig::new(NodeId(1));
    cfg.cluster_id = 7;
    cfg.queue_messages = 8;
    let t = TcpTransport::new(cfg, tx, tokio::runtime::Handle::current());
    t.set_peers(&[(NodeId(2), addr)]);
    let start = Instant::now();
    for _ in 0..200 {
        t.send(big_append(1, 2, 256 << 10));
    }
    assert!(start.elapsed() < Duration::from_secs(2), "send never blocks");
    wait_for("drops on the full queue", || t.stats().dropped_queue_full > 0).await;
    let s = t.stats();
    assert!(s.dropped_queue_full + s.sent + s.dropped_connection_lost <= 200);
    stalled.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_or_corrupt_frames_close_the_connection() {
    let mut a = node(1, 7, None).await;
    // A header announcing 4 GiB: closed at once, nothing allocated or delivered.
    let mut s = TcpStream::connect(&a.address).await.unwrap();
    peer_handshake(&mut s).await;
    s.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // A bad checksum: closed.
    let mut s = TcpStream::connect(&a.address).await.unwrap();
    peer_handshake(&mut s).await;
    s.write_all(&[4, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9, 9]).await.unwrap();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    // A valid frame but from someone other than the handshake's sender: closed, not delivered.
    let mut s = TcpStream::connect(&a.address).await.unwrap();
    peer_handshake(&mut s).await;
    let mut frame = Vec::new();
    dqlite_node::transport::frame::encode_frame(&heartbeat(3, 1, 0), 1 << 20, &mut frame).unwrap();
    s.write_all(&frame).await.unwrap();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0);
    wait_for("three malformed connections", || a.transport.stats().malformed >= 3).await;
    assert!(a.inbox.try_recv().is_err(), "nothing was delivered");
}

async fn peer_handshake(s: &mut TcpStream) {
    let hello = Hello {
        format_version: FORMAT_VERSION,
        cluster_id: 7,
        from: NodeId(2),
        to: NodeId(1),
        max_frame_bytes: 0,
        address: String::new(),
    };
    let mut first = PEER_MAGIC.to_le_bytes().to_vec();
    first.extend_from_slice(&hello.encode());
    s.write_all(&first).await.unwrap();
    let mut reply = [0u8; HELLO_REPLY_LEN];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(HelloReply::decode(&reply).unwrap().status, HelloStatus::Accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_and_small_messages_interleaved_arrive_in_order_per_lane_and_unchanged() {
    // Big messages (at or above `BLOCKING_CODEC_BYTES`) are encoded and decoded on blocking
    // threads, and the reader moves the bytes there and back: small AppendEntries before and
    // after a big one, coalesced into the same reads, must still come out whole and in order.
    // Heartbeats take the other connection (`Lane::Control`): in order among themselves.
    use dqlite_node::transport::Lane;
    let mut a = node(1, 7, None).await;
    let b = node(2, 7, None).await;
    let peers = vec![(NodeId(1), a.address.clone()), (NodeId(2), b.address.clone())];
    a.transport.set_peers(&peers);
    b.transport.set_peers(&peers);
    let big = dqlite_node::transport::frame::BLOCKING_CODEC_BYTES;
    let mut sent = Vec::new();
    for i in 0..12u64 {
        sent.push(heartbeat(2, 1, i));
        sent.push(big_append(2, 1, 100 + i as usize));
        let mut m = big_append(2, 1, big + (i as usize) * 100_003);
        if let MessageBody::AppendEntries(ae) = &mut m.body {
            for (k, byte) in ae.entries[0].data.iter_mut().enumerate() {
                *byte = (k as u64 ^ i).wrapping_mul(31) as u8;
            }
        }
        sent.push(m);
        sent.push(big_append(2, 1, 7 * i as usize));
        sent.push(heartbeat(2, 1, 100 + i));
    }
    // A message of 6 MiB: bigger than one read.
    sent.push(big_append(2, 1, 6 << 20));
    sent.push(heartbeat(2, 1, 1000));
    for m in &sent {
        b.transport.send(m.clone());
    }
    let mut got = Vec::new();
    for _ in 0..sent.len() {
        got.push(recv(&mut a.inbox).await);
    }
    for lane in [Lane::Control, Lane::Bulk] {
        let want: Vec<&Message> = sent.iter().filter(|m| Lane::of(m) == lane).collect();
        let have: Vec<&Message> = got.iter().filter(|m| Lane::of(m) == lane).collect();
        assert_eq!(want.len(), have.len(), "{lane:?}: message count");
        for (i, (w, h)) in want.iter().zip(&have).enumerate() {
            assert!(w == h, "{lane:?} message {i} changed or out of order");
        }
    }
    assert_eq!(a.transport.stats().malformed, 0);
}
