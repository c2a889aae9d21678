//! Sans-I/O codec for the dqlite client wire protocol v1.
//!
//! This crate turns every request and response of the dqlite protocol
//! (`shared/PROTOCOL.md`) into bytes and back, in **both directions**: a client
//! encodes requests and decodes responses; a server decodes requests and encodes
//! responses. It is shared by the `sqlx-dqlite` driver and the `dqlite-node` server.
//!
//! What it does **not** do: any I/O. It opens no socket, reads no clock, spawns no
//! task and keeps no connection state beyond a [`rows::RowsCursor`]. Callers read
//! bytes from wherever they like, ask [`header::check`] whether a whole message has
//! arrived, and hand the body to a decoder. Protocol *semantics* (leader checks, what
//! a FAILURE code means for retries, binding parameters to SQLite) also live in the
//! callers; this crate only says what the bytes mean.
//!
//! ```text
//!            client (driver)                              server (node)
//!   Request ──encode──▶ Vec<u8> ══ TCP ══▶ header::check/parse ──▶ Request::decode
//!                                                                        │
//!   Response::decode / rows::Rows ◀── header::parse ◀══ TCP ══ Vec<u8> ◀─┘
//!                                            Response::encode / rows::RowsWriter
//! ```
//!
//! Every decoder returns a [`DecodeError`] on malformed input and never panics
//! (checked arithmetic, no unchecked slicing; proven by a property test and a
//! `cargo fuzz` target in `node/wire/fuzz`). Decoded text, blobs and params borrow
//! from the message body ([`ValueRef`]); convert with [`ValueRef::to_owned`] when needed.
//!
//! # Map of the crate
//!
//! | module | contents |
//! |---|---|
//! | [`handshake`] | the version word sent after connecting |
//! | [`header`] | 8-byte header, [`header::check`] / [`header::parse`] framing with a size limit |
//! | [`value`] | [`ValueType`] codes, owned [`Value`], borrowed [`ValueRef`] |
//! | [`tuple`](mod@tuple) | params tuples (schema 0: ≤ 255 values, schema 1), row tuples, [`Params`] |
//! | [`request`] | [`Request`]: all 20 request types, encode and decode |
//! | [`response`] | [`Response`]: all 11 response types, encode and decode |
//! | [`rows`] | ROWS streaming ([`Rows`], [`RowsCursor`]) and batching ([`RowsWriter`]) |
//! | [`ids`], [`codes`], [`error`] | newtypes and roles, failure codes, error enums |
//! | [`failure`] | the fixed FAILURE messages clients decide on, with their codes |
//!
//! # Testing
//!
//! `cargo test -p dqlite-wire` runs byte-exact tests per message, round trips, and
//! property tests over random and mutated bytes (each prints its seed; replay with
//! `DQLITE_WIRE_SEED=<seed>`, more cases with `DQLITE_WIRE_PROPTEST_CASES=<n>`).
//! The fuzz target lives in `node/wire/fuzz` (outside the workspace):
//! `cd node/wire && RUSTC_BOOTSTRAP=1 cargo fuzz run decode -- -max_total_time=660`.
//!
//! # Example
//!
//! The worked example of PROTOCOL.md: `QUERY_SQL "SELECT ?"` with one INTEGER, and its
//! one-row reply, streamed.
//!
//! ```
//! use dqlite_wire::{
//!     header, DbId, Params, Request, Schema, Value, ValueRef,
//!     rows::{Rows, RowsBatch, RowsEnd},
//!     ResponseType, DEFAULT_MAX_BODY_BYTES,
//! };
//!
//! // Client: encode the request.
//! let params = [Value::Integer(1)];
//! let request = Request::QuerySql {
//!     db: DbId(0),
//!     sql: "SELECT ?",
//!     params: Params::from_values(&params),
//!     schema: Schema::V0,
//! };
//! let mut wire = Vec::new();
//! request.encode(&mut wire)?;
//! assert_eq!(wire.len(), 8 + 5 * 8);
//!
//! // Server: frame and decode it, then answer with one ROWS message.
//! let (message, used) = header::parse(&wire, DEFAULT_MAX_BODY_BYTES)?.expect("complete");
//! assert_eq!(used, wire.len());
//! let decoded = Request::decode_message(message)?;
//! assert_eq!(decoded, request);
//! let reply = RowsBatch {
//!     columns: vec!["?"],
//!     rows: vec![vec![ValueRef::Integer(1)]],
//!     end: RowsEnd::Done,
//! };
//! let mut reply_bytes = Vec::new();
//! reply.encode(&mut reply_bytes)?;
//!
//! // Client: a partial buffer is not an error, just incomplete.
//! assert!(header::parse(&reply_bytes[..10], DEFAULT_MAX_BODY_BYTES)?.is_none());
//! let (message, _) = header::parse(&reply_bytes, DEFAULT_MAX_BODY_BYTES)?.expect("complete");
//! assert_eq!(message.header.message_type, ResponseType::Rows.code());
//! let mut rows = Rows::new(message.body)?;
//! assert_eq!(rows.column_names(), ["?"]);
//! while let Some(row) = rows.next_row()? {
//!     assert_eq!(row, [ValueRef::Integer(1)]);
//! }
//! assert_eq!(rows.end(), Some(RowsEnd::Done));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod buf;
pub mod codes;
pub mod error;
pub mod failure;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod header;
pub mod ids;
pub mod request;
pub mod response;
pub mod rows;
pub mod tuple;
pub mod value;

pub use error::{DecodeError, EncodeError};
pub use handshake::ProtocolVersion;
pub use header::{FrameStatus, Header, Message, DEFAULT_MAX_BODY_BYTES, HEADER_LEN};
pub use ids::{DbId, Role, StmtId, WireNodeId};
pub use request::{NodeInfoFormat, Request, RequestType};
pub use response::{DecodeContext, File, NodeInfo, Response, ResponseType};
pub use rows::{Rows, RowsBatch, RowsCursor, RowsEnd, RowsStep, RowsWriter};
pub use tuple::{Params, Schema};
pub use value::{Value, ValueRef, ValueType};

#[cfg(test)]
mod test_util {
    /// The bytes spelled by the hex digits of `s`; anything else (spaces, `|`, newlines) is
    /// layout and skipped, so expected messages can be written word by word.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }
}
