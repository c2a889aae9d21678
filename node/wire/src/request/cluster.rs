//! Bodies of the cluster-family requests: LEADER, CLIENT, HEARTBEAT, CONNECT, ADD,
//! ASSIGN, REMOVE, CLUSTER, TRANSFER, DESCRIBE, WEIGHT.
//!
//! ```text
//! LEADER    u64 0            CONNECT  u64 id, text address   CLUSTER   u64 format
//! CLIENT    u64 id           ADD      u64 id, text address   TRANSFER  u64 id
//! HEARTBEAT u64 timestamp    ASSIGN   u64 id, u64 role       DESCRIBE  u64 format
//!                            REMOVE   u64 id                 WEIGHT    u64 weight
//! ```

use super::{NodeInfoFormat, Request, RequestType};
use crate::buf::{put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::ids::{Role, WireNodeId};

/// Encode the body if `req` belongs to this family; `Ok(false)` otherwise.
pub(super) fn encode_body(req: &Request<'_>, out: &mut Vec<u8>) -> Result<bool, EncodeError> {
    match *req {
        Request::Leader => put_u64(out, 0),
        Request::Client { id } => put_u64(out, id),
        Request::Heartbeat { timestamp } => put_u64(out, timestamp),
        Request::Connect { id, address } | Request::Add { id, address } => {
            put_u64(out, id.0);
            put_text(out, address)?;
        }
        Request::Assign { id, role } => {
            put_u64(out, id.0);
            put_u64(out, role.code());
        }
        Request::Remove { id } | Request::Transfer { id } => put_u64(out, id.0),
        Request::Cluster { format } => put_u64(out, format.code()),
        Request::Describe { format } => put_u64(out, format),
        Request::Weight { weight } => put_u64(out, weight),
        _ => return Ok(false),
    }
    Ok(true)
}

/// Decode the body if `ty` belongs to this family; `Ok(None)` otherwise.
pub(super) fn decode_body(ty: RequestType, body: &[u8]) -> Result<Option<Request<'_>>, DecodeError> {
    let mut r = Reader::new(body);
    let req = match ty {
        RequestType::Leader => {
            r.u64("leader unused field")?;
            Request::Leader
        }
        RequestType::Client => Request::Client { id: r.u64("client id")? },
        RequestType::Heartbeat => Request::Heartbeat { timestamp: r.u64("heartbeat timestamp")? },
        RequestType::Connect => {
            Request::Connect { id: WireNodeId(r.u64("node id")?), address: r.text("node address")? }
        }
        RequestType::Add => Request::Add { id: WireNodeId(r.u64("node id")?), address: r.text("node address")? },
        RequestType::Assign => {
            let id = WireNodeId(r.u64("node id")?);
            // Old clients sent only the id (PROMOTE): the server defaults to voter.
            let role = if r.remaining() == 0 { Role::Voter } else { Role::from_code(r.u64("node role")?)? };
            Request::Assign { id, role }
        }
        RequestType::Remove => Request::Remove { id: WireNodeId(r.u64("node id")?) },
        RequestType::Cluster => Request::Cluster { format: NodeInfoFormat::from_code(r.u64("cluster format")?)? },
        RequestType::Transfer => Request::Transfer { id: WireNodeId(r.u64("node id")?) },
        RequestType::Describe => Request::Describe { format: r.u64("describe format")? },
        RequestType::Weight => Request::Weight { weight: r.u64("weight")? },
        _ => return Ok(None),
    };
    r.finish()?;
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;

    fn bytes(req: &Request<'_>) -> Vec<u8> {
        req.to_bytes().unwrap()
    }

    #[test]
    fn cluster_requests_are_byte_exact() {
        assert_eq!(bytes(&Request::Leader), [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(&Request::Client { id: 0x0102 }), [1, 0, 0, 0, 1, 0, 0, 0, 0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(&Request::Connect { id: WireNodeId(2), address: "1.2.3.4:5" }),
            [&[3, 0, 0, 0, 11, 0, 0, 0][..], &[2, 0, 0, 0, 0, 0, 0, 0], b"1.2.3.4:5\0\0\0\0\0\0\0"].concat()
        );
        assert_eq!(
            bytes(&Request::Assign { id: WireNodeId(3), role: Role::Spare }),
            [2, 0, 0, 0, 13, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes(&Request::Cluster { format: NodeInfoFormat::V1 }),
            [1, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(bytes(&Request::Weight { weight: 9 }), [1, 0, 0, 0, 19, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn assign_with_only_an_id_means_voter() {
        let h = Header::new(13, 0, 1);
        assert_eq!(
            Request::decode(&h, &[5, 0, 0, 0, 0, 0, 0, 0]),
            Ok(Request::Assign { id: WireNodeId(5), role: Role::Voter })
        );
        let mut body = vec![5, 0, 0, 0, 0, 0, 0, 0];
        body.extend_from_slice(&3u64.to_le_bytes());
        assert_eq!(Request::decode(&h, &body), Err(DecodeError::UnknownRole(3)));
    }

    #[test]
    fn bad_cluster_format_is_an_error() {
        let h = Header::new(16, 0, 1);
        assert_eq!(Request::decode(&h, &2u64.to_le_bytes()), Err(DecodeError::UnsupportedFormat(2)));
    }
}
