//! Cluster-family responses.
//!
//! ```text
//! SERVER   u64 id, text address          (legacy handshake: text address only)
//! WELCOME  u64 heartbeat_timeout_ms
//! SERVERS  u64 n, n × (u64 id, text address[, u64 role if format 1])
//! METADATA u64 failure_domain, u64 weight
//! ```

use super::{DecodeContext, NodeInfo, Response, ResponseType};
use crate::buf::{put_text, put_u64, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::handshake::ProtocolVersion;
use crate::ids::{Role, WireNodeId};
use crate::request::NodeInfoFormat;

pub(super) fn encode(resp: &Response<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    match resp {
        Response::Server { id, address } => {
            put_u64(out, id.0);
            put_text(out, address)?;
        }
        Response::ServerLegacy { address } => put_text(out, address)?,
        Response::Welcome { heartbeat_timeout_ms } => put_u64(out, *heartbeat_timeout_ms),
        Response::Servers { format, nodes } => {
            put_u64(out, nodes.len() as u64);
            for node in nodes {
                put_u64(out, node.id.0);
                put_text(out, node.address)?;
                if *format == NodeInfoFormat::V1 {
                    let role = node.role.ok_or(EncodeError::MissingRole { id: node.id.0 })?;
                    put_u64(out, role.code());
                }
            }
        }
        Response::Metadata { failure_domain, weight } => {
            put_u64(out, *failure_domain);
            put_u64(out, *weight);
        }
        // Other families are dispatched elsewhere by `Response::encode`.
        _ => {}
    }
    Ok(())
}

pub(super) fn decode<'a>(ty: ResponseType, body: &'a [u8], ctx: &DecodeContext) -> Result<Response<'a>, DecodeError> {
    let mut r = Reader::new(body);
    let resp = match ty {
        ResponseType::Server => match ctx.version {
            ProtocolVersion::V1 => {
                Response::Server { id: WireNodeId(r.u64("leader id")?), address: r.text("leader address")? }
            }
            ProtocolVersion::Legacy => Response::ServerLegacy { address: r.text("leader address")? },
        },
        ResponseType::Welcome => Response::Welcome { heartbeat_timeout_ms: r.u64("heartbeat timeout")? },
        ResponseType::Servers => {
            let format = ctx.node_info_format;
            let item_len = match format {
                NodeInfoFormat::V0 => 16,
                NodeInfoFormat::V1 => 24,
            };
            let n = r.count("servers", item_len)?;
            let mut nodes = Vec::with_capacity(n);
            for _ in 0..n {
                let id = WireNodeId(r.u64("node id")?);
                let address = r.text("node address")?;
                let role = match format {
                    NodeInfoFormat::V0 => None,
                    NodeInfoFormat::V1 => Some(Role::from_code(r.u64("node role")?)?),
                };
                nodes.push(NodeInfo { id, address, role });
            }
            Response::Servers { format, nodes }
        }
        ResponseType::Metadata => {
            Response::Metadata { failure_domain: r.u64("failure domain")?, weight: r.u64("weight")? }
        }
        other => return Err(DecodeError::UnknownResponseType(other.code())),
    };
    r.finish()?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Header;

    #[test]
    fn cluster_responses_are_byte_exact() {
        let server = Response::Server { id: WireNodeId(1), address: "127.0.0.1:9001" };
        assert_eq!(
            server.to_bytes().unwrap(),
            [&[3, 0, 0, 0, 1, 0, 0, 0][..], &[1, 0, 0, 0, 0, 0, 0, 0], b"127.0.0.1:9001\0\0"].concat()
        );
        let legacy = Response::ServerLegacy { address: "x" };
        assert_eq!(legacy.to_bytes().unwrap(), [&[1, 0, 0, 0, 1, 0, 0, 0][..], b"x\0\0\0\0\0\0\0"].concat());
        let welcome = Response::Welcome { heartbeat_timeout_ms: 15000 };
        assert_eq!(welcome.to_bytes().unwrap(), [1, 0, 0, 0, 2, 0, 0, 0, 0x98, 0x3a, 0, 0, 0, 0, 0, 0]);
        let servers = Response::Servers {
            format: NodeInfoFormat::V1,
            nodes: vec![NodeInfo { id: WireNodeId(2), address: "a", role: Some(Role::Standby) }],
        };
        assert_eq!(
            servers.to_bytes().unwrap(),
            [
                &[4, 0, 0, 0, 3, 0, 0, 0][..],
                &[1, 0, 0, 0, 0, 0, 0, 0],
                &[2, 0, 0, 0, 0, 0, 0, 0],
                b"a\0\0\0\0\0\0\0",
                &[1, 0, 0, 0, 0, 0, 0, 0]
            ]
            .concat()
        );
        let meta = Response::Metadata { failure_domain: 3, weight: 4 };
        assert_eq!(meta.to_bytes().unwrap(), [2, 0, 0, 0, 10, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn servers_format_1_needs_roles_and_valid_role_codes() {
        let servers = Response::Servers {
            format: NodeInfoFormat::V1,
            nodes: vec![NodeInfo { id: WireNodeId(2), address: "a", role: None }],
        };
        assert_eq!(servers.to_bytes(), Err(EncodeError::MissingRole { id: 2 }));
        let mut body = Vec::new();
        put_u64(&mut body, 1);
        put_u64(&mut body, 2);
        put_text(&mut body, "a").unwrap();
        put_u64(&mut body, 7);
        assert_eq!(
            Response::decode(&Header::new(3, 0, 4), &body, &DecodeContext::default()),
            Err(DecodeError::UnknownRole(7))
        );
    }
}
