//! The peer protocol's bytes, without I/O: preamble, hello, hello reply, message frames.
//!
//! The layout is documented in `docs/peer-protocol.md` (format version 2). Every decoder here
//! returns a [`FrameError`] on any input and never panics; sizes are checked before anything is
//! allocated.

use dqlite_raft::{Message, MessageBody, NodeId};

/// The first word of a peer connection (`b"DQRSPEER"` read as a little-endian `u64`). Distinct
/// from dqlite's client protocol words (`1` and the legacy `0x86104dd760433fe5`), so the server
/// can route a connection by its first 8 bytes.
pub const PEER_MAGIC: u64 = u64::from_le_bytes(*b"DQRSPEER");

/// The peer framing format this build speaks. Version 2 added `Heartbeat::leader_commit`
/// (follower reads); a version-1 peer is refused at the handshake (status 1).
pub const FORMAT_VERSION: u32 = 2;

/// Length of the hello's fixed part in bytes (the sender's address follows).
pub const HELLO_LEN: usize = 40;

/// Length of the hello reply in bytes.
pub const HELLO_REPLY_LEN: usize = 24;

/// Length of a frame header in bytes (`u32` payload length, `u32` CRC32C of the payload).
pub const FRAME_HEADER_LEN: usize = 8;

/// Why peer bytes could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Fewer bytes than the fixed-size structure needs.
    #[error("truncated {what}: {len} bytes")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes available.
        len: usize,
    },
    /// A frame announces a payload above the configured limit.
    #[error("peer frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced payload length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The payload's checksum does not match its header.
    #[error("peer frame checksum mismatch (header {expected:#010x}, payload {actual:#010x})")]
    Checksum {
        /// From the header.
        expected: u32,
        /// Computed over the payload.
        actual: u32,
    },
    /// The payload is not a valid postcard-encoded Raft message.
    #[error("malformed peer message: {0}")]
    Malformed(String),
    /// A reply status this build does not know.
    #[error("unknown hello status {0}")]
    UnknownStatus(u32),
}

/// The initiator's hello: who is talking to whom, in which cluster and format, and where the
/// sender can be reached (so a joining node can answer a leader it has no address for yet).
///
/// ```text
/// u32 format_version | u32 address_len | u64 cluster_id | u64 from | u64 to | u64 max_frame_bytes
/// address_len bytes of UTF-8 address (HOST:PORT, at most MAX_ADDRESS_LEN)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's format version.
    pub format_version: u32,
    /// The sender's cluster id (0 while it does not know one yet).
    pub cluster_id: u64,
    /// The sender's node id.
    pub from: NodeId,
    /// The node id the sender believes it is connected to.
    pub to: NodeId,
    /// The largest frame payload the sender will send (informational).
    pub max_frame_bytes: u64,
    /// The sender's own address (may be empty).
    pub address: String,
}

/// Longest address a hello may carry.
pub const MAX_ADDRESS_LEN: usize = 1024;

impl Hello {
    /// The wire bytes (40 + the address's length).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; HELLO_LEN];
        out[0..4].copy_from_slice(&self.format_version.to_le_bytes());
        out[4..8].copy_from_slice(&(self.address.len() as u32).to_le_bytes());
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.from.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.to.0.to_le_bytes());
        out[32..40].copy_from_slice(&self.max_frame_bytes.to_le_bytes());
        out.extend_from_slice(self.address.as_bytes());
        out
    }

    /// The length of the address that follows a hello's fixed 40 bytes (checked against
    /// [`MAX_ADDRESS_LEN`]).
    pub fn address_len(fixed: &[u8]) -> Result<usize, FrameError> {
        let b = fixed.get(4..8).ok_or(FrameError::Truncated { what: "hello", len: fixed.len() })?;
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len > MAX_ADDRESS_LEN {
            return Err(FrameError::TooLarge { len: len as u64, limit: MAX_ADDRESS_LEN });
        }
        Ok(len)
    }

    /// Decodes a whole hello (fixed part and address).
    pub fn decode(buf: &[u8]) -> Result<Hello, FrameError> {
        let b: &[u8; HELLO_LEN] = buf
            .get(..HELLO_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated { what: "hello", len: buf.len() })?;
        let len = Hello::address_len(b)?;
        let address = buf
            .get(HELLO_LEN..HELLO_LEN + len)
            .ok_or(FrameError::Truncated { what: "hello address", len: buf.len() })?;
        let address =
            std::str::from_utf8(address).map_err(|_| FrameError::Malformed("hello address is not UTF-8".into()))?;
        Ok(Hello {
            format_version: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            cluster_id: u64_at(b, 8),
            from: NodeId(u64_at(b, 16)),
            to: NodeId(u64_at(b, 24)),
            max_frame_bytes: u64_at(b, 32),
            address: address.to_owned(),
        })
    }
}

/// The acceptor's verdict on a hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloStatus {
    /// 0: accepted; frames may follow.
    Accepted,
    /// 1: the format version is not spoken here.
    UnsupportedVersion,
    /// 2: the sender belongs to another cluster.
    WrongCluster,
    /// 3: this is not the node the sender meant (`to` is another id).
    WrongNode,
    /// 4: the sender's id is invalid (0) or is the acceptor's own.
    BadSender,
}

impl HelloStatus {
    /// The wire code.
    pub fn code(self) -> u32 {
        match self {
            HelloStatus::Accepted => 0,
            HelloStatus::UnsupportedVersion => 1,
            HelloStatus::WrongCluster => 2,
            HelloStatus::WrongNode => 3,
            HelloStatus::BadSender => 4,
        }
    }

    /// Parses a wire code.
    pub fn from_code(code: u32) -> Result<Self, FrameError> {
        Ok(match code {
            0 => HelloStatus::Accepted,
            1 => HelloStatus::UnsupportedVersion,
            2 => HelloStatus::WrongCluster,
            3 => HelloStatus::WrongNode,
            4 => HelloStatus::BadSender,
            other => return Err(FrameError::UnknownStatus(other)),
        })
    }
}

/// The acceptor's answer to a hello.
///
/// ```text
/// u32 format_version | u32 status | u64 cluster_id | u64 node_id
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloReply {
    /// The acceptor's format version.
    pub format_version: u32,
    /// The verdict.
    pub status: HelloStatus,
    /// The acceptor's cluster id (0 if it knows none).
    pub cluster_id: u64,
    /// The acceptor's node id.
    pub node_id: NodeId,
}

impl HelloReply {
    /// The 24 wire bytes.
    pub fn encode(&self) -> [u8; HELLO_REPLY_LEN] {
        let mut out = [0u8; HELLO_REPLY_LEN];
        out[0..4].copy_from_slice(&self.format_version.to_le_bytes());
        out[4..8].copy_from_slice(&self.status.code().to_le_bytes());
        out[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.node_id.0.to_le_bytes());
        out
    }

    /// Decodes a reply.
    pub fn decode(buf: &[u8]) -> Result<HelloReply, FrameError> {
        let b: &[u8; HELLO_REPLY_LEN] = buf
            .get(..HELLO_REPLY_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(FrameError::Truncated { what: "hello reply", len: buf.len() })?;
        Ok(HelloReply {
            format_version: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            status: HelloStatus::from_code(u32::from_le_bytes([b[4], b[5], b[6], b[7]]))?,
            cluster_id: u64_at(b, 8),
            node_id: NodeId(u64_at(b, 16)),
        })
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Appends one frame holding `msg` to `out`. On error (the encoded message is larger than
/// `max_frame_bytes`) nothing is appended.
pub fn encode_frame(msg: &Message, max_frame_bytes: usize, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER_LEN]);
    if let Err(e) = postcard::serialize_with_flavor(msg, VecTail(out)) {
        out.truncate(start);
        return Err(FrameError::Malformed(e.to_string()));
    }
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len > max_frame_bytes || u32::try_from(len).is_err() {
        out.truncate(start);
        return Err(FrameError::TooLarge { len: len as u64, limit: max_frame_bytes });
    }
    let crc = crc32c::crc32c(&out[start + FRAME_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Messages and frames carrying at least this many payload bytes are encoded and decoded on a
/// blocking thread, never on an async worker: a worker busy for tens of milliseconds (a debug
/// build, a loaded machine, a 64 MiB entry) delays the Raft task's ticks and heartbeats.
pub const BLOCKING_CODEC_BYTES: usize = 256 << 10;

/// The bytes of entry data or snapshot data `msg` carries (what its encoding costs).
pub fn payload_bytes(msg: &Message) -> usize {
    match &msg.body {
        MessageBody::AppendEntries(a) => a.entries.iter().map(|e| e.data.len()).sum(),
        MessageBody::InstallSnapshot(s) => s.data.len(),
        _ => 0,
    }
}

/// A postcard output that appends to a `Vec` and copies byte strings in one go (postcard's
/// own `ExtendFlavor` pushes them byte by byte: a multi-megabyte entry then costs tens of
/// milliseconds even in an optimized build).
struct VecTail<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecTail<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Whether `buf` starts with a whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// At least this many more bytes are needed.
    Incomplete(usize),
    /// The first `len` bytes are one frame.
    Complete(usize),
}

/// Checks whether `buf` starts with a complete frame no larger than `max_frame_bytes`
/// (rejected from the header alone, before the payload arrives).
pub fn check_frame(buf: &[u8], max_frame_bytes: usize) -> Result<FrameStatus, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(FrameStatus::Incomplete(FRAME_HEADER_LEN - buf.len()));
    };
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_frame_bytes {
        return Err(FrameError::TooLarge { len: len as u64, limit: max_frame_bytes });
    }
    let total = FRAME_HEADER_LEN + len;
    if buf.len() < total {
        Ok(FrameStatus::Incomplete(total - buf.len()))
    } else {
        Ok(FrameStatus::Complete(total))
    }
}

/// Decodes the frame at the start of `buf`: `Ok(None)` if it is not complete yet, else the
/// message and the number of bytes it used.
pub fn decode_frame(buf: &[u8], max_frame_bytes: usize) -> Result<Option<(Message, usize)>, FrameError> {
    let total = match check_frame(buf, max_frame_bytes)? {
        FrameStatus::Incomplete(_) => return Ok(None),
        FrameStatus::Complete(total) => total,
    };
    let expected = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let payload = &buf[FRAME_HEADER_LEN..total];
    let actual = crc32c::crc32c(payload);
    if actual != expected {
        return Err(FrameError::Checksum { expected, actual });
    }
    let (msg, rest) =
        postcard::take_from_bytes::<Message>(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes after the message", rest.len())));
    }
    Ok(Some((msg, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite_raft::{AppendEntries, Entry, EntryKind, LogIndex, MessageBody, Term};

    fn sample() -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::AppendEntries(AppendEntries {
                prev_log_index: LogIndex(4),
                prev_log_term: Term(2),
                entries: vec![Entry {
                    term: Term(3),
                    index: LogIndex(5),
                    kind: EntryKind::Command,
                    data: vec![7; 100],
                }],
                leader_commit: LogIndex(4),
            }),
        }
    }

    #[test]
    fn magic_differs_from_client_words() {
        assert_ne!(PEER_MAGIC, dqlite_wire::ProtocolVersion::V1_WORD);
        assert_ne!(PEER_MAGIC, dqlite_wire::ProtocolVersion::LEGACY_WORD);
        assert_eq!(&PEER_MAGIC.to_le_bytes(), b"DQRSPEER");
    }

    #[test]
    fn hello_and_reply_round_trip_byte_exact() {
        let h = Hello {
            format_version: 1,
            cluster_id: 0x1122,
            from: NodeId(5),
            to: NodeId(6),
            max_frame_bytes: 4096,
            address: "h:1".into(),
        };
        let b = h.encode();
        assert_eq!(&b[0..8], &[1, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&b[8..16], &[0x22, 0x11, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[40..], b"h:1");
        assert_eq!(Hello::decode(&b), Ok(h));
        assert!(Hello::decode(&b[..42]).is_err());
        let mut long = b.clone();
        long[4..8].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(Hello::decode(&long), Err(FrameError::TooLarge { .. })));
        let r = HelloReply { format_version: 1, status: HelloStatus::WrongCluster, cluster_id: 9, node_id: NodeId(6) };
        let b = r.encode();
        assert_eq!(&b[4..8], &[2, 0, 0, 0]);
        assert_eq!(HelloReply::decode(&b), Ok(r));
        let mut bad = b;
        bad[4] = 77;
        assert_eq!(HelloReply::decode(&bad), Err(FrameError::UnknownStatus(77)));
    }

    #[test]
    fn frame_round_trip_and_limits() {
        let msg = sample();
        let mut out = vec![0xaa];
        encode_frame(&msg, 1 << 20, &mut out).unwrap();
        let frame = &out[1..];
        assert_eq!(check_frame(&frame[..3], 1 << 20), Ok(FrameStatus::Incomplete(5)));
        assert!(decode_frame(&frame[..frame.len() - 1], 1 << 20).unwrap().is_none());
        let (back, used) = decode_frame(frame, 1 << 20).unwrap().unwrap();
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
        // Over the limit: rejected from the header, on both sides.
        assert!(matches!(decode_frame(frame, 16), Err(FrameError::TooLarge { .. })));
        let mut small = vec![1, 2];
        assert!(matches!(encode_frame(&msg, 16, &mut small), Err(FrameError::TooLarge { .. })));
        assert_eq!(small, vec![1, 2]);
        // A flipped payload bit is caught by the checksum.
        let mut corrupt = frame.to_vec();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(matches!(decode_frame(&corrupt, 1 << 20), Err(FrameError::Checksum { .. })));
    }
}
