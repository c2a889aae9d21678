//! Messages exchanged between Raft peers. Serializable with the optional `serde` feature.

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// One message from `from` to `to`, stamped with the sender's term.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// Sender.
    pub from: NodeId,
    /// Recipient.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term the sender would campaign in).
    pub term: Term,
    /// What it says.
    pub body: MessageBody,
}

/// The kinds of message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum MessageBody {
    /// Would you vote for me in `term` (= my term + 1)? Changes nobody's term (thesis §9.6).
    PreVote(VoteRequest),
    /// Answer to [`MessageBody::PreVote`].
    PreVoteResponse(VoteResponse),
    /// Vote for me in `term` (§5.2).
    RequestVote(VoteRequest),
    /// Answer to [`MessageBody::RequestVote`].
    RequestVoteResponse(VoteResponse),
    /// Log entries to append after `prev` (§5.3).
    AppendEntries(AppendEntries),
    /// Answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse(AppendEntriesResponse),
    /// Leader liveness, commit index, and ReadIndex confirmation round.
    Heartbeat(Heartbeat),
    /// Answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse(HeartbeatResponse),
    /// One chunk of a snapshot (§7).
    InstallSnapshot(InstallSnapshot),
    /// Answer to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Start an election now, skipping pre-vote (leadership transfer, thesis §3.10).
    TimeoutNow,
}

/// A vote or pre-vote request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VoteRequest {
    /// The candidate's last log index.
    pub last_log_index: LogIndex,
    /// The candidate's last log term.
    pub last_log_term: Term,
    /// The election was started by a leadership transfer: voters ignore their leader lease.
    pub transfer: bool,
}

/// A vote or pre-vote answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VoteResponse {
    /// Whether the vote is granted.
    pub granted: bool,
}

/// Entries to append (empty for a probe).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AppendEntries {
    /// Index of the entry just before `entries`.
    pub prev_log_index: LogIndex,
    /// Its term.
    pub prev_log_term: Term,
    /// Entries, contiguous from `prev_log_index + 1`.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

/// Answer to an append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AppendEntriesResponse {
    /// True if the follower's log now matches the leader's up to `index`.
    pub success: bool,
    /// On success: the last index known to match. On rejection: the `prev_log_index` rejected.
    pub index: LogIndex,
    /// On rejection, the fast back-off hint: where the leader should probe next.
    pub hint: Option<RejectHint>,
}

/// Fast conflict back-off (§5.3, "the follower can include the term of the conflicting entry
/// and the first index it stores for that term").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RejectHint {
    /// The term of the follower's entry at the rejected index, or `None` if its log is shorter.
    pub conflict_term: Option<Term>,
    /// The first index the follower holds for `conflict_term`, or its last index + 1 when
    /// its log is shorter than the probe.
    pub conflict_index: LogIndex,
}

/// A heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Heartbeat {
    /// `min(leader commit, follower's match index)`: safe for the follower to commit.
    pub commit: LogIndex,
    /// The ReadIndex round this heartbeat confirms (0 for none).
    pub read_seq: u64,
    /// The leader's own commit index when it sent this heartbeat (not capped by the
    /// follower's match index). Informational only: a follower never commits by it (it may
    /// not hold those entries yet, or hold different ones). A follower uses it to bound its
    /// staleness: once it has applied this index, it reflects everything the leader had
    /// committed when it sent the heartbeat (follower reads).
    pub leader_commit: LogIndex,
}

/// Answer to a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HeartbeatResponse {
    /// Echo of [`Heartbeat::read_seq`].
    pub read_seq: u64,
}

/// One chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InstallSnapshot {
    /// What the snapshot stands for.
    pub meta: SnapshotMeta,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// The bytes.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_bytes"))]
    pub data: Vec<u8>,
    /// True for the last chunk.
    pub done: bool,
}

/// Answer to a snapshot chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct InstallSnapshotResponse {
    /// The snapshot's index.
    pub snapshot_index: LogIndex,
    /// Bytes received contiguously so far: where the next chunk should start.
    pub next_offset: u64,
    /// True once the snapshot is installed (or the follower already has its contents);
    /// `match_index` is then the follower's matching index.
    pub done: bool,
    /// With `done`: the index up to which the follower's log matches the leader's.
    pub match_index: LogIndex,
}
