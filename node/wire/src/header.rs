//! The 8-byte message header and framing helpers (PROTOCOL.md section 2).
//!
//! ```text
//! bytes 0-3  words   u32 LE  body length in 8-byte words
//! byte  4    type    u8      request or response type
//! byte  5    schema  u8      per-type body schema (normally 0)
//! bytes 6-7  extra   u16 LE  unused, 0
//! ```
//!
//! Framing follows the mini-redis pattern: [`check`] tells whether a buffer holds a
//! whole message (and how many bytes are still missing if not) without allocating,
//! then [`parse`] borrows the header and body out of it. An oversized header is
//! rejected before anything is allocated or read.

use crate::buf::WORD;
use crate::error::{DecodeError, EncodeError};

/// Length of the message header in bytes.
pub const HEADER_LEN: usize = 8;

/// Default maximum body size accepted by [`check`]/[`parse`] callers that have no better
/// idea: 64 MiB. Raise it for DUMP of large databases.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Body length in 8-byte words.
    pub words: u32,
    /// Request or response type code.
    pub message_type: u8,
    /// Body schema version.
    pub schema: u8,
    /// Unused field, 0 when sent by us.
    pub extra: u16,
}

impl Header {
    /// A header for a body of `words` words.
    pub fn new(message_type: u8, schema: u8, words: u32) -> Self {
        Header { words, message_type, schema, extra: 0 }
    }

    /// Encode to the 8 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.words.to_le_bytes());
        out[4] = self.message_type;
        out[5] = self.schema;
        out[6..8].copy_from_slice(&self.extra.to_le_bytes());
        out
    }

    /// Decode the header at the start of `buf` (which may hold more bytes).
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        let b: &[u8; HEADER_LEN] = buf
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DecodeError::Truncated { what: "message header" })?;
        Ok(Header {
            words: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            message_type: b[4],
            schema: b[5],
            extra: u16::from_le_bytes([b[6], b[7]]),
        })
    }

    /// Body length in bytes (`words * 8`), computed without overflow.
    pub fn body_bytes(&self) -> u64 {
        u64::from(self.words) * WORD as u64
    }

    /// Total message length (header + body), if it fits in `usize`.
    pub fn message_bytes(&self) -> Option<usize> {
        usize::try_from(self.body_bytes()).ok()?.checked_add(HEADER_LEN)
    }
}

/// Result of [`check`]: whether a buffer starts with a whole message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// At least `needed` more bytes must arrive before the message is complete.
    /// (If the header itself is incomplete, `needed` counts only the header bytes.)
    Incomplete {
        /// Bytes still missing.
        needed: usize,
    },
    /// The first `len` bytes of the buffer are one whole message (header + body).
    Complete {
        /// Total message length in bytes.
        len: usize,
    },
}

/// A whole message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// The header.
    pub header: Header,
    /// The body (`header.words * 8` bytes).
    pub body: &'a [u8],
}

/// Check whether `buf` starts with a complete message whose body is at most
/// `max_body_bytes` long. Never allocates; rejects an oversized header at once.
pub fn check(buf: &[u8], max_body_bytes: usize) -> Result<FrameStatus, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(FrameStatus::Incomplete { needed: HEADER_LEN - buf.len() });
    }
    let header = Header::decode(buf)?;
    let body_bytes = header.body_bytes();
    if body_bytes > max_body_bytes as u64 {
        return Err(DecodeError::MessageTooLarge { body_bytes, max_bytes: max_body_bytes as u64 });
    }
    let len =
        header.message_bytes().ok_or(DecodeError::MessageTooLarge { body_bytes, max_bytes: max_body_bytes as u64 })?;
    if buf.len() < len {
        Ok(FrameStatus::Incomplete { needed: len - buf.len() })
    } else {
        Ok(FrameStatus::Complete { len })
    }
}

/// If `buf` starts with a complete message, borrow it and return it with its total length
/// (the number of bytes to consume). `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8], max_body_bytes: usize) -> Result<Option<(Message<'_>, usize)>, DecodeError> {
    match check(buf, max_body_bytes)? {
        FrameStatus::Incomplete { .. } => Ok(None),
        FrameStatus::Complete { len } => {
            let header = Header::decode(buf)?;
            let body = buf.get(HEADER_LEN..len).ok_or(DecodeError::Truncated { what: "message body" })?;
            Ok(Some((Message { header, body }, len)))
        }
    }
}

/// Write a whole message: header, then whatever `body` appends, then patch the word count.
///
/// `body` must append a word-aligned body; the header's `words` is computed from it.
/// On error `out` is truncated back to its original length.
pub(crate) fn write_message(
    out: &mut Vec<u8>,
    message_type: u8,
    schema: u8,
    body: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let result = body(out).and_then(|()| patch_header(out, start, message_type, schema));
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Fill in the placeholder header at `out[start..]` with the word count of the body that
/// follows it (everything up to the end of `out`).
pub(crate) fn patch_header(out: &mut [u8], start: usize, message_type: u8, schema: u8) -> Result<(), EncodeError> {
    let body_bytes = out.len() - start - HEADER_LEN;
    debug_assert_eq!(body_bytes % WORD, 0, "encoders keep bodies word-aligned");
    let words = u32::try_from(body_bytes / WORD).map_err(|_| EncodeError::MessageTooLarge { body_bytes })?;
    let header = Header::new(message_type, schema, words).encode();
    out[start..start + HEADER_LEN].copy_from_slice(&header);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes_are_exact() {
        let h = Header::new(9, 0, 5);
        assert_eq!(h.encode(), [0x05, 0, 0, 0, 0x09, 0x00, 0x00, 0x00]);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let h = Header { words: 0x0102_0304, message_type: 7, schema: 1, extra: 0xbeef };
        assert_eq!(h.encode(), [4, 3, 2, 1, 7, 1, 0xef, 0xbe]);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn check_reports_missing_bytes() {
        assert_eq!(check(&[], 64), Ok(FrameStatus::Incomplete { needed: 8 }));
        assert_eq!(check(&[1, 0, 0], 64), Ok(FrameStatus::Incomplete { needed: 5 }));
        let mut msg = Header::new(8, 0, 1).encode().to_vec();
        assert_eq!(check(&msg, 64), Ok(FrameStatus::Incomplete { needed: 8 }));
        msg.extend_from_slice(&[0; 5]);
        assert_eq!(check(&msg, 64), Ok(FrameStatus::Incomplete { needed: 3 }));
        msg.extend_from_slice(&[0; 3]);
        assert_eq!(check(&msg, 64), Ok(FrameStatus::Complete { len: 16 }));
        msg.extend_from_slice(&[0xaa; 4]); // start of the next message
        let (m, len) = parse(&msg, 64).unwrap().unwrap();
        assert_eq!(len, 16);
        assert_eq!(m.header.message_type, 8);
        assert_eq!(m.body, &[0; 8]);
    }

    #[test]
    fn oversized_header_is_rejected_before_the_body_arrives() {
        let msg = Header::new(7, 0, u32::MAX).encode();
        assert_eq!(
            check(&msg, 4096),
            Err(DecodeError::MessageTooLarge { body_bytes: u64::from(u32::MAX) * 8, max_bytes: 4096 })
        );
        assert_eq!(
            parse(&Header::new(7, 0, 513).encode(), 4096).map(|_| ()),
            Err(DecodeError::MessageTooLarge { body_bytes: 4104, max_bytes: 4096 })
        );
        assert_eq!(check(&Header::new(7, 0, 512).encode(), 4096), Ok(FrameStatus::Incomplete { needed: 4096 }));
    }
}
