//! Errors of the codec: one enum per direction, reasons as variants.

use thiserror::Error;

/// Why a byte buffer could not be decoded.
///
/// Every decoder in this crate returns this error (never panics) on malformed input.
/// A server usually answers a request that fails to decode with
/// `FAILURE DQLITE_PARSE (1005)`; a client should treat it as a broken connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ends before the field `what` is complete.
    #[error("truncated message: not enough bytes for {what}")]
    Truncated {
        /// Which field was being read.
        what: &'static str,
    },
    /// A message header announces a body larger than the configured maximum.
    #[error("message body of {body_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    MessageTooLarge {
        /// Body size announced by the header.
        body_bytes: u64,
        /// Configured maximum.
        max_bytes: u64,
    },
    /// A message body's length is not a multiple of 8 bytes.
    #[error("message body of {len} bytes is not word-aligned")]
    BodyNotWordAligned {
        /// The body length in bytes.
        len: usize,
    },
    /// A value type code is not one of 1, 2, 3, 4, 5, 9, 10, 11.
    #[error("unknown value type code {0}")]
    UnknownValueType(u8),
    /// A `text` field has no NUL terminator before the end of the body.
    #[error("text field without NUL terminator")]
    TextWithoutNul,
    /// A `text` field is not valid UTF-8.
    #[error("text field is not valid UTF-8")]
    InvalidUtf8,
    /// The handshake word is neither version 1 nor the legacy version.
    #[error("unknown protocol version {0:#x}")]
    UnknownProtocolVersion(u64),
    /// The message type byte is not a known request type.
    #[error("unknown request type {0}")]
    UnknownRequestType(u8),
    /// The message type byte is not a known response type.
    #[error("unknown response type {0}")]
    UnknownResponseType(u8),
    /// The schema byte is not supported for this message type.
    #[error("unsupported schema {schema} for message type {message_type}")]
    UnsupportedSchema {
        /// The message type byte.
        message_type: u8,
        /// The schema byte.
        schema: u8,
    },
    /// A CLUSTER/SERVERS format other than 0 or 1.
    #[error("unsupported node-info format {0}")]
    UnsupportedFormat(u64),
    /// A node role other than 0 (voter), 1 (standby), 2 (spare).
    #[error("unknown node role {0}")]
    UnknownRole(u64),
    /// Bytes remain after the last field of a message.
    #[error("{0} trailing bytes after the end of the message")]
    TrailingBytes(usize),
    /// A ROWS end marker word is neither DONE (`0xff..`) nor PART (`0xee..`).
    #[error("malformed ROWS end marker {0:#018x}")]
    BadRowsMarker(u64),
    /// A count field (columns, nodes, files, ...) cannot fit in the bytes that remain.
    #[error("count {count} for {what} cannot fit in the message")]
    CountTooLarge {
        /// Which list.
        what: &'static str,
        /// The announced count.
        count: u64,
    },
    /// A DB or STMT response's unused padding field is not zero (an id that does not fit in 32 bits).
    #[error("value {value} out of range for {what}")]
    OutOfRange {
        /// Which field.
        what: &'static str,
        /// The value read.
        value: u64,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A schema-0 params tuple holds at most 255 values; use schema 1 (server ≥ 1.15.1).
    #[error("{count} parameters exceed the maximum of {max} for this tuple schema")]
    TooManyParams {
        /// Number of parameters given.
        count: usize,
        /// The schema's maximum.
        max: usize,
    },
    /// A `text` field cannot carry an interior NUL byte.
    #[error("text field contains a NUL byte")]
    TextContainsNul,
    /// The message body would be longer than `u32::MAX` words.
    #[error("message body of {body_bytes} bytes is too large for the wire header")]
    MessageTooLarge {
        /// The body length in bytes.
        body_bytes: usize,
    },
    /// A row has a different number of values than the ROWS message has columns.
    #[error("row has {got} values but the result has {expected} columns")]
    ColumnCountMismatch {
        /// Column count of the ROWS message.
        expected: usize,
        /// Values in the row.
        got: usize,
    },
    /// A node-info in format 1 needs a role.
    #[error("node {id} has no role, which node-info format 1 requires")]
    MissingRole {
        /// The node id.
        id: u64,
    },
}
