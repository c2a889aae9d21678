//! A minimal, blocking dqlite wire-protocol client for the launcher: only the LEADER and
//! CLUSTER requests, enough to watch a cluster form and elect a leader.
//!
//! It is written from `PROTOCOL.md` independently of `dqlite-wire` on purpose: the launcher
//! judges the state of the cluster the driver is tested against, so it must not share the
//! driver's codec (a codec bug would otherwise hide itself).
//!
//! Every socket operation has a timeout, so a dead or hung node costs at most `timeout`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Protocol version word sent right after connecting ("VersionOne").
const PROTOCOL_VERSION: u64 = 1;
/// Request types (PROTOCOL.md section 4).
const REQUEST_LEADER: u8 = 0;
const REQUEST_CLUSTER: u8 = 16;
/// Response types (PROTOCOL.md section 5).
const RESPONSE_FAILURE: u8 = 0;
const RESPONSE_SERVER: u8 = 1;
const RESPONSE_SERVERS: u8 = 3;
/// Largest response body this probe accepts; a cluster description is a few hundred bytes.
const BODY_BYTES_MAX: usize = 1 << 20;

/// A node's role in the Raft configuration, as the wire reports it (0 voter, 1 standby, 2 spare).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Votes and replicates.
    Voter,
    /// Replicates but does not vote.
    Standby,
    /// Neither votes nor replicates.
    Spare,
}

/// One member of the cluster configuration, as reported by CLUSTER (format 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Raft node id.
    pub id: u64,
    /// The node's address as configured (`host:port`).
    pub address: String,
    /// Its role.
    pub role: Role,
}

/// Asks the node at `addr` who it believes the leader is. `Ok(None)` when it knows no leader
/// (or is not a voter).
pub fn leader(addr: SocketAddr, timeout: Duration) -> io::Result<Option<String>> {
    let mut stream = connect(addr, timeout)?;
    let (kind, body) = request(&mut stream, REQUEST_LEADER, &0u64.to_le_bytes())?;
    let body = expect(kind, body, RESPONSE_SERVER)?;
    let mut cursor = Cursor::new(&body);
    let _id = cursor.u64()?;
    let address = cursor.text()?;
    Ok(if address.is_empty() { None } else { Some(address) })
}

/// Asks the node at `addr` for the cluster configuration (CLUSTER, format 1).
pub fn cluster(addr: SocketAddr, timeout: Duration) -> io::Result<Vec<ServerInfo>> {
    let mut stream = connect(addr, timeout)?;
    let (kind, body) = request(&mut stream, REQUEST_CLUSTER, &1u64.to_le_bytes())?;
    let body = expect(kind, body, RESPONSE_SERVERS)?;
    decode_servers(&body)
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(&PROTOCOL_VERSION.to_le_bytes())?;
    Ok(stream)
}

/// Sends one request (body must be word-aligned) and reads one response.
fn request(stream: &mut TcpStream, kind: u8, body: &[u8]) -> io::Result<(u8, Vec<u8>)> {
    debug_assert_eq!(body.len() % 8, 0, "request bodies are whole words");
    let mut message = encode_header(body.len() / 8, kind).to_vec();
    message.extend_from_slice(body);
    stream.write_all(&message)?;

    let mut header = [0u8; 8];
    stream.read_exact(&mut header)?;
    let (words, response_kind) = decode_header(header);
    let len = words
        .checked_mul(8)
        .filter(|len| *len <= BODY_BYTES_MAX)
        .ok_or_else(|| invalid(format!("response body of {words} words is too large")))?;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok((response_kind, body))
}

fn encode_header(words: usize, kind: u8) -> [u8; 8] {
    let words = u32::try_from(words).expect("probe requests are a few words long");
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&words.to_le_bytes());
    header[4] = kind;
    header
}

fn decode_header(header: [u8; 8]) -> (usize, u8) {
    let words = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    (words as usize, header[4])
}

/// Turns a FAILURE or an unexpected response type into an error.
fn expect(kind: u8, body: Vec<u8>, wanted: u8) -> io::Result<Vec<u8>> {
    if kind == wanted {
        return Ok(body);
    }
    if kind == RESPONSE_FAILURE {
        let mut cursor = Cursor::new(&body);
        let code = cursor.u64()?;
        let message = cursor.text()?;
        return Err(io::Error::other(format!("node answered FAILURE {code}: {message}")));
    }
    Err(invalid(format!("expected response type {wanted}, got {kind}")))
}

fn decode_servers(body: &[u8]) -> io::Result<Vec<ServerInfo>> {
    let mut cursor = Cursor::new(body);
    let n = cursor.u64()?;
    // Each entry takes at least 3 words; refuse counts the body cannot hold.
    if n > (body.len() / 24) as u64 {
        return Err(invalid(format!("SERVERS claims {n} entries in {} bytes", body.len())));
    }
    let mut servers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let id = cursor.u64()?;
        let address = cursor.text()?;
        let role = match cursor.u64()? {
            0 => Role::Voter,
            1 => Role::Standby,
            2 => Role::Spare,
            other => return Err(invalid(format!("unknown role {other}"))),
        };
        servers.push(ServerInfo { id, address, role });
    }
    Ok(servers)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads word-aligned fields from a response body; every read is bounds-checked.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn u64(&mut self) -> io::Result<u64> {
        let word = self
            .bytes
            .get(self.pos..self.pos + 8)
            .ok_or_else(|| invalid("response body ends inside a uint64".into()))?;
        self.pos += 8;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(word);
        Ok(u64::from_le_bytes(buf))
    }

    /// A NUL-terminated UTF-8 string padded with zeros to the next word boundary.
    fn text(&mut self) -> io::Result<String> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        let nul =
            rest.iter().position(|b| *b == 0).ok_or_else(|| invalid("text field without NUL terminator".into()))?;
        let text =
            std::str::from_utf8(&rest[..nul]).map_err(|e| invalid(format!("text field is not UTF-8: {e}")))?.to_owned();
        let padded = (nul + 1).div_ceil(8) * 8;
        if padded > rest.len() {
            return Err(invalid("text field padding runs past the body".into()));
        }
        self.pos += padded;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<u8> {
        let mut bytes = s.as_bytes().to_vec();
        bytes.push(0);
        while bytes.len() % 8 != 0 {
            bytes.push(0);
        }
        bytes
    }

    #[test]
    fn header_round_trip() {
        let header = encode_header(1, REQUEST_CLUSTER);
        assert_eq!(header, [1, 0, 0, 0, 16, 0, 0, 0]);
        assert_eq!(decode_header(header), (1, 16));
    }

    #[test]
    fn decodes_servers_format_1() {
        let mut body = 2u64.to_le_bytes().to_vec();
        body.extend(7u64.to_le_bytes());
        body.extend(text("127.0.0.2:9001")); // 14 bytes + NUL -> 16
        body.extend(0u64.to_le_bytes());
        body.extend(8u64.to_le_bytes());
        body.extend(text("127.0.0.3:9001"));
        body.extend(2u64.to_le_bytes());
        let servers = decode_servers(&body).unwrap();
        assert_eq!(
            servers,
            vec![
                ServerInfo { id: 7, address: "127.0.0.2:9001".into(), role: Role::Voter },
                ServerInfo { id: 8, address: "127.0.0.3:9001".into(), role: Role::Spare },
            ]
        );
    }

    #[test]
    fn text_exactly_one_word_with_nul() {
        // 7 characters + NUL fill one word exactly.
        let body = text("1234567");
        assert_eq!(body.len(), 8);
        let mut cursor = Cursor::new(&body);
        assert_eq!(cursor.text().unwrap(), "1234567");
        assert_eq!(cursor.pos, 8);
    }

    #[test]
    fn truncated_or_lying_bodies_are_errors() {
        assert!(decode_servers(&[]).is_err());
        assert!(decode_servers(&5u64.to_le_bytes()).is_err(), "count larger than the body");
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend(1u64.to_le_bytes());
        body.extend(b"no-nul-");
        body.push(b'x');
        body.extend(0u64.to_le_bytes());
        assert!(decode_servers(&body).is_err(), "entry cut short after its address");
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend(1u64.to_le_bytes());
        body.extend(text("a:1"));
        body.extend(9u64.to_le_bytes());
        assert!(decode_servers(&body).is_err(), "unknown role");
    }

    #[test]
    fn failure_response_becomes_an_error() {
        let mut body = 10250u64.to_le_bytes().to_vec();
        body.extend(text("not leader"));
        let err = expect(RESPONSE_FAILURE, body, RESPONSE_SERVER).unwrap_err();
        assert!(err.to_string().contains("10250"), "{err}");
        assert!(expect(RESPONSE_SERVERS, vec![], RESPONSE_SERVER).is_err());
    }
}
