//! Requests, client → server (PROTOCOL.md section 4).
//!
//! A client builds a [`Request`] and calls [`Request::encode`], which appends the
//! header and body to a buffer. A server frames bytes with [`crate::header::parse`] and
//! calls [`Request::decode`]; text and params borrow from the body.
//!
//! Bodies are encoded per family: `cluster.rs` (leader, membership, node metadata) and
//! `sql.rs` (databases, statements, queries), each with byte-exact tests.

mod cluster;
mod sql;

use crate::error::{DecodeError, EncodeError};
use crate::header::{write_message, Header, Message};
use crate::ids::{DbId, Role, StmtId, WireNodeId};
use crate::tuple::{Params, Schema};

/// Request type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RequestType {
    /// 0: who is the leader.
    Leader = 0,
    /// 1: register a client.
    Client = 1,
    /// 2: heartbeat (declared, never dispatched by dqlite).
    Heartbeat = 2,
    /// 3: open a database.
    Open = 3,
    /// 4: prepare a statement.
    Prepare = 4,
    /// 5: execute a prepared statement.
    Exec = 5,
    /// 6: query a prepared statement.
    Query = 6,
    /// 7: finalize a prepared statement.
    Finalize = 7,
    /// 8: execute SQL text.
    ExecSql = 8,
    /// 9: query SQL text.
    QuerySql = 9,
    /// 10: interrupt a running query.
    Interrupt = 10,
    /// 11: switch the connection to Raft traffic.
    Connect = 11,
    /// 12: add a node (as spare).
    Add = 12,
    /// 13: assign a role to a node.
    Assign = 13,
    /// 14: remove a node.
    Remove = 14,
    /// 15: dump a database's files.
    Dump = 15,
    /// 16: list the cluster's nodes.
    Cluster = 16,
    /// 17: transfer leadership.
    Transfer = 17,
    /// 18: describe this node.
    Describe = 18,
    /// 19: set this node's weight.
    Weight = 19,
}

impl RequestType {
    /// The wire code.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// Parse a wire code.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        use RequestType::*;
        Ok(match code {
            0 => Leader,
            1 => Client,
            2 => Heartbeat,
            3 => Open,
            4 => Prepare,
            5 => Exec,
            6 => Query,
            7 => Finalize,
            8 => ExecSql,
            9 => QuerySql,
            10 => Interrupt,
            11 => Connect,
            12 => Add,
            13 => Assign,
            14 => Remove,
            15 => Dump,
            16 => Cluster,
            17 => Transfer,
            18 => Describe,
            19 => Weight,
            other => return Err(DecodeError::UnknownRequestType(other)),
        })
    }
}

/// Format of the node list in a CLUSTER request / SERVERS response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NodeInfoFormat {
    /// 0: `id`, `address`.
    V0,
    /// 1: `id`, `address`, `role` (what clients should ask for).
    #[default]
    V1,
}

impl NodeInfoFormat {
    /// The wire value.
    pub fn code(self) -> u64 {
        match self {
            NodeInfoFormat::V0 => 0,
            NodeInfoFormat::V1 => 1,
        }
    }

    /// Parse the wire value.
    pub fn from_code(code: u64) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(NodeInfoFormat::V0),
            1 => Ok(NodeInfoFormat::V1),
            other => Err(DecodeError::UnsupportedFormat(other)),
        }
    }
}

/// A request message. Text and params borrow from the caller (encode) or the body (decode).
#[derive(Debug, Clone, PartialEq)]
pub enum Request<'a> {
    /// LEADER: ask for the current leader (reply SERVER).
    Leader,
    /// CLIENT: register (reply WELCOME). go-dqlite sends id 0.
    Client {
        /// Client id (stored, unused by the server).
        id: u64,
    },
    /// HEARTBEAT: not dispatched by dqlite; do not send it.
    Heartbeat {
        /// Timestamp.
        timestamp: u64,
    },
    /// OPEN a database (reply DB).
    Open {
        /// Database file name.
        name: &'a str,
        /// Open flags (ignored by the server).
        flags: u64,
        /// VFS name (ignored by the server; go-dqlite sends "volatile").
        vfs: &'a str,
    },
    /// PREPARE a statement (reply STMT in the same schema).
    Prepare {
        /// Database id (0).
        db: DbId,
        /// SQL text.
        sql: &'a str,
        /// `V1` asks for the tail offset and accepts multi-statement SQL.
        schema: Schema,
    },
    /// EXEC a prepared statement (reply RESULT).
    Exec {
        /// Database id (0).
        db: DbId,
        /// Statement id.
        stmt: StmtId,
        /// Bound parameters.
        params: Params<'a>,
        /// Params tuple schema.
        schema: Schema,
    },
    /// QUERY a prepared statement (reply ROWS, possibly several messages).
    Query {
        /// Database id (0).
        db: DbId,
        /// Statement id.
        stmt: StmtId,
        /// Bound parameters.
        params: Params<'a>,
        /// Params tuple schema.
        schema: Schema,
    },
    /// FINALIZE a prepared statement (reply EMPTY).
    Finalize {
        /// Database id (0).
        db: DbId,
        /// Statement id.
        stmt: StmtId,
    },
    /// EXEC_SQL: execute SQL text, possibly several statements (reply RESULT).
    ExecSql {
        /// Database id (0).
        db: DbId,
        /// SQL text.
        sql: &'a str,
        /// Bound parameters.
        params: Params<'a>,
        /// Params tuple schema.
        schema: Schema,
    },
    /// QUERY_SQL: query SQL text (reply ROWS).
    QuerySql {
        /// Database id (0).
        db: DbId,
        /// SQL text.
        sql: &'a str,
        /// Bound parameters.
        params: Params<'a>,
        /// Params tuple schema.
        schema: Schema,
    },
    /// INTERRUPT a query (reply EMPTY after the remaining ROWS).
    Interrupt {
        /// Database id (0).
        db: DbId,
    },
    /// CONNECT: the socket becomes a Raft peer connection (no reply).
    Connect {
        /// Sender's node id.
        id: WireNodeId,
        /// Sender's address.
        address: &'a str,
    },
    /// ADD a node as spare (reply EMPTY).
    Add {
        /// Node id.
        id: WireNodeId,
        /// Node address.
        address: &'a str,
    },
    /// ASSIGN a role (reply EMPTY). A body with only the id decodes as `Voter` (old clients).
    Assign {
        /// Node id.
        id: WireNodeId,
        /// New role.
        role: Role,
    },
    /// REMOVE a node (reply EMPTY).
    Remove {
        /// Node id.
        id: WireNodeId,
    },
    /// DUMP a database (reply FILES).
    Dump {
        /// Database name.
        name: &'a str,
    },
    /// CLUSTER: list nodes (reply SERVERS).
    Cluster {
        /// Node-info format of the reply.
        format: NodeInfoFormat,
    },
    /// TRANSFER leadership (reply EMPTY); id 0 lets Raft pick.
    Transfer {
        /// Target node id.
        id: WireNodeId,
    },
    /// DESCRIBE this node (reply METADATA). Format must be 0; kept raw so a server can reply
    /// with a proper failure to other values.
    Describe {
        /// Format (0).
        format: u64,
    },
    /// WEIGHT: set this node's weight (reply EMPTY).
    Weight {
        /// New weight.
        weight: u64,
    },
}

impl<'a> Request<'a> {
    /// The type code of this request.
    pub fn request_type(&self) -> RequestType {
        match self {
            Request::Leader => RequestType::Leader,
            Request::Client { .. } => RequestType::Client,
            Request::Heartbeat { .. } => RequestType::Heartbeat,
            Request::Open { .. } => RequestType::Open,
            Request::Prepare { .. } => RequestType::Prepare,
            Request::Exec { .. } => RequestType::Exec,
            Request::Query { .. } => RequestType::Query,
            Request::Finalize { .. } => RequestType::Finalize,
            Request::ExecSql { .. } => RequestType::ExecSql,
            Request::QuerySql { .. } => RequestType::QuerySql,
            Request::Interrupt { .. } => RequestType::Interrupt,
            Request::Connect { .. } => RequestType::Connect,
            Request::Add { .. } => RequestType::Add,
            Request::Assign { .. } => RequestType::Assign,
            Request::Remove { .. } => RequestType::Remove,
            Request::Dump { .. } => RequestType::Dump,
            Request::Cluster { .. } => RequestType::Cluster,
            Request::Transfer { .. } => RequestType::Transfer,
            Request::Describe { .. } => RequestType::Describe,
            Request::Weight { .. } => RequestType::Weight,
        }
    }

    /// The header schema byte of this request.
    pub fn schema(&self) -> Schema {
        match self {
            Request::Prepare { schema, .. }
            | Request::Exec { schema, .. }
            | Request::Query { schema, .. }
            | Request::ExecSql { schema, .. }
            | Request::QuerySql { schema, .. } => *schema,
            _ => Schema::V0,
        }
    }

    /// Append the whole message (header and body) to `out`.
    /// On error nothing is appended.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        write_message(out, self.request_type().code(), self.schema().code(), |out| {
            if cluster::encode_body(self, out)? {
                Ok(())
            } else {
                sql::encode_body(self, out)
            }
        })
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decode a request from its header and body. Trailing bytes are an error.
    pub fn decode(header: &Header, body: &'a [u8]) -> Result<Self, DecodeError> {
        if body.len() % 8 != 0 {
            return Err(DecodeError::BodyNotWordAligned { len: body.len() });
        }
        let ty = RequestType::from_code(header.message_type)?;
        let schema = Schema::from_code(header.message_type, header.schema)?;
        let takes_schema = matches!(
            ty,
            RequestType::Prepare
                | RequestType::Exec
                | RequestType::Query
                | RequestType::ExecSql
                | RequestType::QuerySql
        );
        if schema != Schema::V0 && !takes_schema {
            return Err(DecodeError::UnsupportedSchema { message_type: header.message_type, schema: header.schema });
        }
        match cluster::decode_body(ty, body)? {
            Some(req) => Ok(req),
            None => sql::decode_body(ty, schema, body),
        }
    }

    /// Decode a framed message (see [`crate::header::parse`]).
    pub fn decode_message(message: Message<'a>) -> Result<Self, DecodeError> {
        Request::decode(&message.header, message.body)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::header::{parse, HEADER_LEN};
    use crate::value::Value;

    #[test]
    fn type_codes_round_trip() {
        for code in 0..=255u8 {
            match RequestType::from_code(code) {
                Ok(t) => assert_eq!(t.code(), code),
                Err(e) => {
                    assert!(code >= 20);
                    assert_eq!(e, DecodeError::UnknownRequestType(code));
                }
            }
        }
    }

    /// Every request, for round-trip tests.
    pub(crate) fn all_requests(values: &[Value]) -> Vec<Request<'_>> {
        let params = Params::from_values(values);
        vec![
            Request::Leader,
            Request::Client { id: 7 },
            Request::Heartbeat { timestamp: 12345 },
            Request::Open { name: "db.bin", flags: 6, vfs: "volatile" },
            Request::Prepare { db: DbId(0), sql: "SELECT 1; SELECT 2", schema: Schema::V0 },
            Request::Prepare { db: DbId(0), sql: "SELECT 1; SELECT 2", schema: Schema::V1 },
            Request::Exec { db: DbId(0), stmt: StmtId(3), params: params.clone(), schema: Schema::V0 },
            Request::Exec { db: DbId(0), stmt: StmtId(3), params: Params::none(), schema: Schema::V1 },
            Request::Query { db: DbId(1), stmt: StmtId(u32::MAX), params: params.clone(), schema: Schema::V1 },
            Request::Finalize { db: DbId(0), stmt: StmtId(9) },
            Request::ExecSql {
                db: DbId(0),
                sql: "INSERT INTO t VALUES(?)",
                params: params.clone(),
                schema: Schema::V0,
            },
            Request::QuerySql { db: DbId(0), sql: "SELECT ?", params: params.clone(), schema: Schema::V1 },
            Request::QuerySql { db: DbId(0), sql: "", params: Params::none(), schema: Schema::V0 },
            Request::Interrupt { db: DbId(0) },
            Request::Connect { id: WireNodeId(2), address: "127.0.0.2:9001" },
            Request::Add { id: WireNodeId(4), address: "127.0.0.4:9001" },
            Request::Assign { id: WireNodeId(4), role: Role::Standby },
            Request::Remove { id: WireNodeId(4) },
            Request::Dump { name: "db.bin" },
            Request::Cluster { format: NodeInfoFormat::V0 },
            Request::Cluster { format: NodeInfoFormat::V1 },
            Request::Transfer { id: WireNodeId(0) },
            Request::Describe { format: 0 },
            Request::Weight { weight: 42 },
        ]
    }

    #[test]
    fn every_request_round_trips() {
        let values = vec![
            Value::Integer(-1),
            Value::Float(0.25),
            Value::Text("x".into()),
            Value::Blob(vec![1; 9]),
            Value::Null,
            Value::UnixTime(5),
            Value::Iso8601("2020-02-02".into()),
            Value::Boolean(true),
        ];
        let requests = all_requests(&values);
        let mut seen = std::collections::HashSet::new();
        for req in &requests {
            seen.insert(req.request_type());
            let bytes = req.to_bytes().unwrap();
            assert_eq!(bytes.len() % 8, 0);
            // Appending after unaligned bytes gives the same message.
            let mut appended = vec![0xaa; 3];
            req.encode(&mut appended).unwrap();
            assert_eq!(appended[3..], bytes[..]);
            let (msg, len) = parse(&bytes, 1 << 20).unwrap().unwrap();
            assert_eq!(len, bytes.len());
            assert_eq!(msg.body.len(), bytes.len() - HEADER_LEN);
            let back = Request::decode_message(msg).unwrap();
            assert_eq!(&back, req);
            // Truncating the body must give an error, never a panic or a wrong request.
            for cut in (0..msg.body.len()).step_by(8) {
                let r = Request::decode(&msg.header, &msg.body[..cut]);
                assert!(r.is_err() || r.as_ref().ok() != Some(req), "{req:?} cut at {cut}: {r:?}");
            }
        }
        assert_eq!(seen.len(), 20, "all 20 request types covered");
    }

    #[test]
    fn schema_1_is_refused_where_it_has_no_meaning() {
        let mut bytes = Request::Leader.to_bytes().unwrap();
        bytes[5] = 1;
        let (msg, _) = parse(&bytes, 64).unwrap().unwrap();
        assert_eq!(Request::decode_message(msg), Err(DecodeError::UnsupportedSchema { message_type: 0, schema: 1 }));
        bytes[5] = 2;
        bytes[4] = 9;
        let (msg, _) = parse(&bytes, 64).unwrap().unwrap();
        assert!(matches!(Request::decode_message(msg), Err(DecodeError::UnsupportedSchema { .. })));
    }

    #[test]
    fn unknown_type_and_unaligned_body_are_errors() {
        let h = Header::new(20, 0, 1);
        assert_eq!(Request::decode(&h, &[0; 8]), Err(DecodeError::UnknownRequestType(20)));
        let h = Header::new(0, 0, 1);
        assert_eq!(Request::decode(&h, &[0; 7]), Err(DecodeError::BodyNotWordAligned { len: 7 }));
        assert_eq!(Request::decode(&h, &[0; 16]), Err(DecodeError::TrailingBytes(8)));
    }
}
