//! Responses, server → client (PROTOCOL.md section 5).
//!
//! A server builds a [`Response`] and calls [`Response::encode`] (for large results use
//! [`crate::rows::RowsWriter`] to split ROWS into batches). A client frames bytes with
//! [`crate::header::parse`] and calls [`Response::decode`] with a [`DecodeContext`]
//! (the LEADER reply depends on the protocol version, SERVERS on the requested format),
//! or streams ROWS with [`crate::rows::Rows`] / [`crate::rows::RowsCursor`].
//!
//! Bodies are encoded per family: `failure.rs`, `cluster.rs` (SERVER, WELCOME, SERVERS,
//! METADATA), `sql.rs` (DB, STMT, RESULT, EMPTY), `files.rs` (FILES); ROWS in `rows.rs`.

mod cluster;
mod failure;
mod files;
mod sql;

use crate::error::{DecodeError, EncodeError};
use crate::handshake::ProtocolVersion;
use crate::header::{write_message, Header, Message};
use crate::ids::{DbId, Role, StmtId, WireNodeId};
use crate::request::NodeInfoFormat;
use crate::rows::RowsBatch;

/// Response type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseType {
    /// 0: the request failed.
    Failure = 0,
    /// 1: leader id and address.
    Server = 1,
    /// 2: reply to CLIENT.
    Welcome = 2,
    /// 3: node list.
    Servers = 3,
    /// 4: reply to OPEN.
    Db = 4,
    /// 5: reply to PREPARE.
    Stmt = 5,
    /// 6: reply to EXEC / EXEC_SQL.
    Result = 6,
    /// 7: a batch of rows.
    Rows = 7,
    /// 8: no data.
    Empty = 8,
    /// 9: reply to DUMP.
    Files = 9,
    /// 10: reply to DESCRIBE.
    Metadata = 10,
}

impl ResponseType {
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parse a wire code.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        use ResponseType::*;
        Ok(match code {
            0 => Failure,
            1 => Server,
            2 => Welcome,
            3 => Servers,
            4 => Db,
            5 => Stmt,
            6 => Result,
            7 => Rows,
            8 => Empty,
            9 => Files,
            10 => Metadata,
            other => return Err(DecodeError::UnknownResponseType(other)),
        })
    }
}

/// One node in a SERVERS response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo<'a> {
    /// Node id.
    pub id: WireNodeId,
    /// Node address.
    pub address: &'a str,
    /// Role: present in format 1, `None` in format 0.
    pub role: Option<Role>,
}

/// One file in a FILES response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct File<'a> {
    /// File name (`<db>` then `<db>-wal`).
    pub name: &'a str,
    /// File content.
    pub data: &'a [u8],
}

/// What a client must know to decode a response that the header alone does not describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeContext {
    /// Protocol version sent in the handshake (changes the SERVER reply to LEADER).
    pub version: ProtocolVersion,
    /// Format asked for in the CLUSTER request (changes SERVERS).
    pub node_info_format: NodeInfoFormat,
}

/// A response message; text and blobs borrow from the body (decode) or the caller (encode).
#[derive(Debug, Clone, PartialEq)]
pub enum Response<'a> {
    /// FAILURE: an error code (SQLite extended code or dqlite code) and message.
    Failure {
        /// Error code (see [`crate::codes`]).
        code: u64,
        /// Error message.
        message: &'a str,
    },
    /// SERVER: the leader (id 0 and address "" if unknown). A server answers a client that
    /// used the legacy handshake with [`Response::ServerLegacy`] instead.
    Server {
        /// Leader id.
        id: WireNodeId,
        /// Leader address.
        address: &'a str,
    },
    /// SERVER as sent to a client that used the legacy handshake: address only.
    ServerLegacy {
        /// Leader address.
        address: &'a str,
    },
    /// WELCOME: reply to CLIENT.
    Welcome {
        /// Heartbeat timeout in milliseconds (unused).
        heartbeat_timeout_ms: u64,
    },
    /// SERVERS: the cluster's nodes.
    Servers {
        /// Node-info format (from the CLUSTER request).
        format: NodeInfoFormat,
        /// The nodes.
        nodes: Vec<NodeInfo<'a>>,
    },
    /// DB: reply to OPEN.
    Db {
        /// Database id (0).
        id: DbId,
    },
    /// STMT: reply to PREPARE; `tail_offset` is present iff the schema is 1.
    Stmt {
        /// Database id.
        db: DbId,
        /// Statement id.
        id: StmtId,
        /// Number of parameters.
        params: u64,
        /// Byte offset in the SQL where the unprepared remainder starts (schema 1).
        tail_offset: Option<u64>,
    },
    /// RESULT: reply to EXEC / EXEC_SQL.
    ExecResult {
        /// `sqlite3_last_insert_rowid`.
        last_insert_id: u64,
        /// `sqlite3_changes`.
        rows_affected: u64,
    },
    /// ROWS: one batch of a result set, decoded whole.
    Rows(RowsBatch<'a>),
    /// EMPTY.
    Empty,
    /// FILES: reply to DUMP.
    Files {
        /// The files, in order.
        files: Vec<File<'a>>,
    },
    /// METADATA: reply to DESCRIBE.
    Metadata {
        /// Failure domain.
        failure_domain: u64,
        /// Weight.
        weight: u64,
    },
}

impl<'a> Response<'a> {
    /// The type code of this response.
    pub fn response_type(&self) -> ResponseType {
        match self {
            Response::Failure { .. } => ResponseType::Failure,
            Response::Server { .. } | Response::ServerLegacy { .. } => ResponseType::Server,
            Response::Welcome { .. } => ResponseType::Welcome,
            Response::Servers { .. } => ResponseType::Servers,
            Response::Db { .. } => ResponseType::Db,
            Response::Stmt { .. } => ResponseType::Stmt,
            Response::ExecResult { .. } => ResponseType::Result,
            Response::Rows(_) => ResponseType::Rows,
            Response::Empty => ResponseType::Empty,
            Response::Files { .. } => ResponseType::Files,
            Response::Metadata { .. } => ResponseType::Metadata,
        }
    }

    /// The header schema byte (1 only for a STMT with a tail offset).
    pub fn schema(&self) -> u8 {
        match self {
            Response::Stmt { tail_offset: Some(_), .. } => 1,
            _ => 0,
        }
    }

    /// Append the whole message (header and body) to `out`. On error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        write_message(out, self.response_type().code(), self.schema(), |out| match self {
            Response::Failure { code, message } => failure::encode(*code, message, out),
            Response::Rows(batch) => batch.encode_body(out),
            Response::Files { files } => files::encode(files, out),
            Response::Db { .. } | Response::Stmt { .. } | Response::ExecResult { .. } | Response::Empty => {
                sql::encode(self, out)
            }
            _ => cluster::encode(self, out),
        })
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decode a response from its header and body. Trailing bytes are an error.
    pub fn decode(header: &Header, body: &'a [u8], ctx: &DecodeContext) -> Result<Self, DecodeError> {
        if body.len() % 8 != 0 {
            return Err(DecodeError::BodyNotWordAligned { len: body.len() });
        }
        let ty = ResponseType::from_code(header.message_type)?;
        let schema_ok = header.schema == 0 || (ty == ResponseType::Stmt && header.schema == 1);
        if !schema_ok {
            return Err(DecodeError::UnsupportedSchema { message_type: header.message_type, schema: header.schema });
        }
        match ty {
            ResponseType::Failure => failure::decode(body),
            ResponseType::Rows => RowsBatch::decode(body).map(Response::Rows),
            ResponseType::Files => files::decode(body),
            ResponseType::Db | ResponseType::Stmt | ResponseType::Result | ResponseType::Empty => {
                sql::decode(ty, header.schema, body)
            }
            ResponseType::Server | ResponseType::Welcome | ResponseType::Servers | ResponseType::Metadata => {
                cluster::decode(ty, body, ctx)
            }
        }
    }

    /// Decode a framed message (see [`crate::header::parse`]).
    pub fn decode_message(message: Message<'a>, ctx: &DecodeContext) -> Result<Self, DecodeError> {
        Response::decode(&message.header, message.body, ctx)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::header::parse;
    use crate::rows::RowsEnd;
    use crate::value::ValueRef;

    #[test]
    fn type_codes_round_trip() {
        for code in 0..=255u8 {
            match ResponseType::from_code(code) {
                Ok(t) => assert_eq!(t.code(), code),
                Err(e) => {
                    assert!(code >= 11);
                    assert_eq!(e, DecodeError::UnknownResponseType(code));
                }
            }
        }
    }

    /// Every response with the context needed to decode it.
    pub(crate) fn all_responses() -> Vec<(Response<'static>, DecodeContext)> {
        let v1 = DecodeContext::default();
        let legacy = DecodeContext { version: ProtocolVersion::Legacy, ..v1 };
        let format0 = DecodeContext { node_info_format: NodeInfoFormat::V0, ..v1 };
        vec![
            (Response::Failure { code: 10250, message: "not leader" }, v1),
            (Response::Server { id: WireNodeId(1), address: "127.0.0.1:9001" }, v1),
            (Response::Server { id: WireNodeId(0), address: "" }, v1),
            (Response::ServerLegacy { address: "127.0.0.1:9001" }, legacy),
            (Response::Welcome { heartbeat_timeout_ms: 15000 }, v1),
            (
                Response::Servers {
                    format: NodeInfoFormat::V1,
                    nodes: vec![
                        NodeInfo { id: WireNodeId(1), address: "a:1", role: Some(Role::Voter) },
                        NodeInfo { id: WireNodeId(2), address: "b:2", role: Some(Role::Spare) },
                    ],
                },
                v1,
            ),
            (
                Response::Servers {
                    format: NodeInfoFormat::V0,
                    nodes: vec![NodeInfo { id: WireNodeId(3), address: "c:3", role: None }],
                },
                format0,
            ),
            (Response::Servers { format: NodeInfoFormat::V1, nodes: vec![] }, v1),
            (Response::Db { id: DbId(0) }, v1),
            (Response::Stmt { db: DbId(0), id: StmtId(1), params: 2, tail_offset: None }, v1),
            (Response::Stmt { db: DbId(0), id: StmtId(1), params: 2, tail_offset: Some(9) }, v1),
            (Response::ExecResult { last_insert_id: 3, rows_affected: 1 }, v1),
            (
                Response::Rows(RowsBatch {
                    columns: vec!["id", "name", "when"],
                    rows: vec![
                        vec![ValueRef::Integer(1), ValueRef::Text("a"), ValueRef::UnixTime(5)],
                        vec![ValueRef::Float(1.5), ValueRef::Null, ValueRef::Iso8601("")],
                    ],
                    end: RowsEnd::Part,
                }),
                v1,
            ),
            (Response::Rows(RowsBatch { columns: vec![], rows: vec![], end: RowsEnd::Part }), v1),
            (Response::Empty, v1),
            (
                Response::Files {
                    files: vec![File { name: "db.bin", data: &[7; 16] }, File { name: "db.bin-wal", data: &[] }],
                },
                v1,
            ),
            (Response::Metadata { failure_domain: 1, weight: 2 }, v1),
        ]
    }

    #[test]
    fn every_response_round_trips() {
        let mut seen = std::collections::HashSet::new();
        for (resp, ctx) in all_responses() {
            seen.insert(resp.response_type());
            let bytes = resp.to_bytes().unwrap();
            let mut appended = vec![0xaa; 5];
            resp.encode(&mut appended).unwrap();
            assert_eq!(appended[5..], bytes[..]);
            if let Response::Rows(batch) = &resp {
                let mut w = crate::rows::RowsWriter::begin(&mut appended, &batch.columns, usize::MAX).unwrap();
                for row in &batch.rows {
                    w.push_row(row).unwrap();
                }
                w.finish(batch.end).unwrap();
                assert_eq!(appended[5 + bytes.len()..], bytes[..]);
            }
            let (msg, len) = parse(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(len, bytes.len());
            assert_eq!(Response::decode_message(msg, &ctx).unwrap(), resp);
            for cut in (0..msg.body.len()).step_by(8) {
                let r = Response::decode(&msg.header, &msg.body[..cut], &ctx);
                assert!(r.is_err() || r.as_ref().ok() != Some(&resp), "{resp:?} cut at {cut}: {r:?}");
            }
        }
        assert_eq!(seen.len(), 11, "all 11 response types covered");
    }

    #[test]
    fn bad_schema_and_type_are_errors() {
        let ctx = DecodeContext::default();
        assert_eq!(Response::decode(&Header::new(11, 0, 0), &[], &ctx), Err(DecodeError::UnknownResponseType(11)));
        assert!(matches!(
            Response::decode(&Header::new(8, 1, 1), &[0; 8], &ctx),
            Err(DecodeError::UnsupportedSchema { .. })
        ));
        assert_eq!(
            Response::decode(&Header::new(8, 0, 1), &[0; 9], &ctx),
            Err(DecodeError::BodyNotWordAligned { len: 9 })
        );
    }
}
