//! Errors returned by [`RawNode`](crate::RawNode) operations. Reasons are variants.

use crate::config::ConfigError;
use crate::configuration::ConfigurationDecodeError;
use crate::types::{LogIndex, NodeId};

/// Why an operation on the Raft core failed. The node's state is unchanged when one is returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation needs the leader; `leader` is the last known one.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this node believes in, if any.
        leader: Option<NodeId>,
    },
    /// Proposals are refused while leadership is being transferred.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// A membership change is already in progress (uncommitted or catching up).
    #[error("a membership change is already in progress")]
    ConfChangeInProgress,
    /// The node is already a member (for `Add`).
    #[error("node {0:?} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0:?} is not a member")]
    NotMember(NodeId),
    /// The node already has that role.
    #[error("node {0:?} already has that role")]
    RoleUnchanged(NodeId),
    /// The change would leave no voter.
    #[error("the change would leave the cluster without a voter")]
    NoVoterLeft,
    /// Leadership cannot be transferred to that node (not a voter, or self).
    #[error("cannot transfer leadership to {0:?}")]
    InvalidTransferTarget(NodeId),
    /// No voter other than the leader exists to transfer leadership to.
    #[error("no other voter to transfer leadership to")]
    NoTransferTarget,
    /// The message is addressed to another node.
    #[error("message addressed to {to:?}, this node is {me:?}")]
    WrongRecipient {
        /// The message's recipient.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// A message from node id 0.
    #[error("message from reserved node id 0")]
    InvalidSender,
    /// A snapshot was reported at an index not yet applied (or not in the log).
    #[error("snapshot at {index:?} is beyond the applied index {applied:?}")]
    SnapshotNotApplied {
        /// The reported snapshot index.
        index: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
    /// A snapshot was reported at an index older than the current snapshot.
    #[error("snapshot at {index:?} is older than the current one at {current:?}")]
    SnapshotTooOld {
        /// The reported snapshot index.
        index: LogIndex,
        /// The current snapshot index.
        current: LogIndex,
    },
    /// A snapshot chunk was supplied that no [`SnapshotChunkRequest`](crate::SnapshotChunkRequest) asked for.
    #[error("unexpected snapshot chunk for {to:?} at offset {offset}")]
    UnexpectedSnapshotChunk {
        /// The follower.
        to: NodeId,
        /// The chunk's offset.
        offset: u64,
    },
    /// `applied` was reported beyond what was handed out to apply.
    #[error("applied index {applied:?} beyond the entries handed out ({handed_out:?})")]
    AppliedTooFar {
        /// The reported index.
        applied: LogIndex,
        /// The last index handed out in `committed_entries`.
        handed_out: LogIndex,
    },
    /// Restore data is inconsistent.
    #[error("inconsistent restore state: {0}")]
    InvalidRestore(RestoreError),
    /// The node configuration is invalid.
    #[error("invalid config: {0}")]
    Config(#[from] ConfigError),
    /// A configuration entry could not be decoded.
    #[error("bad configuration entry at {index:?}: {source}")]
    BadConfigurationEntry {
        /// The entry's index.
        index: LogIndex,
        /// The decode failure.
        source: ConfigurationDecodeError,
    },
}

/// Why the state passed to [`RawNode::restore`](crate::RawNode::restore) is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// Entries are not contiguous or do not start right after the snapshot.
    #[error("entry {found:?} where {expected:?} was expected")]
    NotContiguous {
        /// The index expected.
        expected: LogIndex,
        /// The index found.
        found: LogIndex,
    },
    /// An entry's term is lower than its predecessor's.
    #[error("entry {0:?} has a term lower than the previous entry")]
    TermDecreases(LogIndex),
}

/// Shorthand for results of core operations.
pub type Result<T, E = Error> = core::result::Result<T, E>;
